//! Training- and test-time image transforms on `f32` CHW images, with torchvision semantics.
//!
//! Augmentation draws from a caller-supplied RNG, so a seeded stage stays bit-reproducible.
//! [`random_crop`] picks the offset uniformly in `0..=H−h` (torchvision `RandomCrop`), [`hflip`]
//! mirrors left-right, [`normalize`] maps each channel to `(x − mean_c) / std_c`, and
//! [`resize_bilinear`] follows PyTorch's `interpolate(mode="bilinear", align_corners=False)`
//! (half-pixel centres, no antialiasing; decoding already resized with antialiasing).
//! For testing, [`ten_crop`] is torchvision's `TenCrop`: the five crops (top-left, top-right,
//! bottom-left, bottom-right, centre) of the image, then the same five of the mirrored image;
//! [`ten_crop_origins`] gives their positions in the original image, and [`mean_softmax`]
//! averages the softmax of the crops' logits, the prediction the Adience protocol scores.
//! [`train_view`] and [`ten_crop_views`] compose these into the paper's Adience protocol
//! (A.5): random crop + mirror + normalisation for training, ten normalised crops for testing.
//! Shape mistakes return a [`TransformError`] instead of panicking.

use rand::Rng;

/// A `[C, H, W]` image, channel-major then row-major: `f32` for the float transforms, `u8` for
/// the geometric ones that stages apply to stored bytes (crops, mirrors and zero padding commute
/// with the per-channel normalisation, so cropping bytes first is exact).
#[derive(Debug, Clone, PartialEq)]
pub struct Chw<T = f32> {
    pub shape: [usize; 3],
    pub data: Vec<T>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    #[error("image data holds {found} values, shape {shape:?} needs {expected}")]
    Shape {
        shape: [usize; 3],
        expected: usize,
        found: usize,
    },
    #[error("crop {crop_h}x{crop_w} at ({top}, {left}) does not fit a {h}x{w} image")]
    Crop {
        top: usize,
        left: usize,
        crop_h: usize,
        crop_w: usize,
        h: usize,
        w: usize,
    },
    #[error("{what}: {found} values for {channels} channels")]
    Channels {
        what: &'static str,
        found: usize,
        channels: usize,
    },
    #[error("normalisation std of channel {channel} is {std}; expected a positive number")]
    Std { channel: usize, std: f32 },
    #[error("{found} logits do not split into {crops} crops of {classes} classes")]
    Logits {
        found: usize,
        crops: usize,
        classes: usize,
    },
    #[error("resize to {h}x{w}: sizes must be positive")]
    Size { h: usize, w: usize },
}

impl<T: Copy> Chw<T> {
    pub fn new(shape: [usize; 3], data: Vec<T>) -> Result<Self, TransformError> {
        let expected = shape.iter().product();
        if data.len() != expected {
            return Err(TransformError::Shape {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Chw { shape, data })
    }

    pub fn channels(&self) -> usize {
        self.shape[0]
    }
    pub fn height(&self) -> usize {
        self.shape[1]
    }
    pub fn width(&self) -> usize {
        self.shape[2]
    }

    /// The value at channel `c`, row `y`, column `x` (panics out of range, like indexing).
    pub fn at(&self, c: usize, y: usize, x: usize) -> T {
        self.data[(c * self.shape[1] + y) * self.shape[2] + x]
    }
}

impl Chw<f32> {
    /// Bytes to `[0, 1]` (`x / 255`, as torchvision's `ToTensor`).
    pub fn from_u8(shape: [usize; 3], pixels: &[u8]) -> Result<Self, TransformError> {
        Chw::new(shape, pixels.iter().map(|&p| p as f32 / 255.0).collect())
    }
}

/// Cut the `h`×`w` window whose top-left corner is (`top`, `left`).
pub fn crop<T: Copy>(
    img: &Chw<T>,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
) -> Result<Chw<T>, TransformError> {
    let [c, ih, iw] = img.shape;
    if h == 0 || w == 0 || top + h > ih || left + w > iw {
        return Err(TransformError::Crop {
            top,
            left,
            crop_h: h,
            crop_w: w,
            h: ih,
            w: iw,
        });
    }
    let mut data = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in top..top + h {
            let row = (ch * ih + y) * iw;
            data.extend_from_slice(&img.data[row + left..row + left + w]);
        }
    }
    Ok(Chw {
        shape: [c, h, w],
        data,
    })
}

/// torchvision's centre offset `int(round((side − crop) / 2))`, rounding half to even.
fn center_offset(side: usize, crop: usize) -> usize {
    ((side as f64 - crop as f64) / 2.0).round_ties_even() as usize
}

/// The centred `h`×`w` window (torchvision `CenterCrop` on an image at least that large).
pub fn center_crop<T: Copy>(img: &Chw<T>, h: usize, w: usize) -> Result<Chw<T>, TransformError> {
    let (top, left) = fits(img, h, w).map(|_| {
        (
            center_offset(img.height(), h),
            center_offset(img.width(), w),
        )
    })?;
    crop(img, top, left, h, w)
}

/// An `h`×`w` window at a uniformly drawn offset (`top` in `0..=H−h`, then `left` in `0..=W−w`).
pub fn random_crop<T: Copy, R: Rng + ?Sized>(
    img: &Chw<T>,
    h: usize,
    w: usize,
    rng: &mut R,
) -> Result<Chw<T>, TransformError> {
    fits(img, h, w)?;
    let top = rng.gen_range(0..=img.height() - h);
    let left = rng.gen_range(0..=img.width() - w);
    crop(img, top, left, h, w)
}

fn fits<T: Copy>(img: &Chw<T>, h: usize, w: usize) -> Result<(), TransformError> {
    if h == 0 || w == 0 || h > img.height() || w > img.width() {
        return Err(TransformError::Crop {
            top: 0,
            left: 0,
            crop_h: h,
            crop_w: w,
            h: img.height(),
            w: img.width(),
        });
    }
    Ok(())
}

/// Surround every channel with `p` zeros on each side (torchvision `RandomCrop(padding=p)`'s
/// constant fill, applied to bytes: black).
pub fn pad<T: Copy + Default>(img: &Chw<T>, p: usize) -> Chw<T> {
    let [c, h, w] = img.shape;
    let (ph, pw) = (h + 2 * p, w + 2 * p);
    let mut data = vec![T::default(); c * ph * pw];
    for ch in 0..c {
        for y in 0..h {
            let src = (ch * h + y) * w;
            let dst = (ch * ph + y + p) * pw + p;
            data[dst..dst + w].copy_from_slice(&img.data[src..src + w]);
        }
    }
    Chw {
        shape: [c, ph, pw],
        data,
    }
}

/// Mirror left-right.
pub fn hflip<T: Copy>(img: &Chw<T>) -> Chw<T> {
    let w = img.width();
    let mut data = img.data.clone();
    if w > 0 {
        for row in data.chunks_exact_mut(w) {
            row.reverse();
        }
    }
    Chw {
        shape: img.shape,
        data,
    }
}

/// Mirror with probability ½ (one `gen_bool` draw per call, whatever the outcome).
pub fn random_hflip<T: Copy, R: Rng + ?Sized>(img: &Chw<T>, rng: &mut R) -> Chw<T> {
    if rng.gen_bool(0.5) {
        hflip(img)
    } else {
        img.clone()
    }
}

/// `(x − mean[c]) / std[c]` per channel, in place.
pub fn normalize(img: &mut Chw, mean: &[f32], std: &[f32]) -> Result<(), TransformError> {
    let c = img.channels();
    for (what, v) in [("mean", mean), ("std", std)] {
        if v.len() != c {
            return Err(TransformError::Channels {
                what,
                found: v.len(),
                channels: c,
            });
        }
    }
    if let Some((channel, &s)) = std
        .iter()
        .enumerate()
        .find(|(_, &s)| s.is_nan() || s <= 0.0)
    {
        return Err(TransformError::Std { channel, std: s });
    }
    let plane = img.height() * img.width();
    if plane > 0 {
        for (ch, values) in img.data.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (mean[ch], std[ch]);
            for v in values {
                *v = (*v - m) / s;
            }
        }
    }
    Ok(())
}

/// Bilinear resize to `h`×`w`, PyTorch `align_corners=False` (source coordinate
/// `(dst + ½)·in/out − ½`, clamped at 0; the far neighbour clamped at the border).
pub fn resize_bilinear(img: &Chw, h: usize, w: usize) -> Result<Chw, TransformError> {
    let [c, ih, iw] = img.shape;
    if h == 0 || w == 0 || ih == 0 || iw == 0 {
        return Err(TransformError::Size { h, w });
    }
    let taps = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|d| {
                let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (taps(h, ih), taps(w, iw));
    let mut data = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        let plane = &img.data[ch * ih * iw..(ch + 1) * ih * iw];
        for &(y0, y1, ly) in &ys {
            for &(x0, x1, lx) in &xs {
                let top = plane[y0 * iw + x0] * (1.0 - lx) + plane[y0 * iw + x1] * lx;
                let bottom = plane[y1 * iw + x0] * (1.0 - lx) + plane[y1 * iw + x1] * lx;
                data.push(top * (1.0 - ly) + bottom * ly);
            }
        }
    }
    Ok(Chw {
        shape: [c, h, w],
        data,
    })
}

/// Where a crop of [`ten_crop`] lies in the original image, and whether it is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropOrigin {
    pub top: usize,
    pub left: usize,
    pub mirrored: bool,
}

/// The ten windows of [`ten_crop`] in original-image coordinates. The last five are the five
/// crops *of the mirrored image*, so the mirrored "top-left" is the original top-right window
/// flipped, and the mirrored centre sits at `W − w − centre_left` (one pixel off the plain
/// centre when `W − w` is odd).
pub fn ten_crop_origins(
    shape: [usize; 3],
    h: usize,
    w: usize,
) -> Result<[CropOrigin; 10], TransformError> {
    let [_, ih, iw] = shape;
    if h == 0 || w == 0 || h > ih || w > iw {
        return Err(TransformError::Crop {
            top: 0,
            left: 0,
            crop_h: h,
            crop_w: w,
            h: ih,
            w: iw,
        });
    }
    let five = [
        (0, 0),
        (0, iw - w),
        (ih - h, 0),
        (ih - h, iw - w),
        (center_offset(ih, h), center_offset(iw, w)),
    ];
    let mut out = [CropOrigin {
        top: 0,
        left: 0,
        mirrored: false,
    }; 10];
    for (k, &(top, left)) in five.iter().enumerate() {
        out[k] = CropOrigin {
            top,
            left,
            mirrored: false,
        };
        out[5 + k] = CropOrigin {
            top,
            left: iw - w - left,
            mirrored: true,
        };
    }
    Ok(out)
}

/// torchvision `TenCrop((h, w))`: `five_crop(img) + five_crop(hflip(img))`, each five in the
/// order top-left, top-right, bottom-left, bottom-right, centre.
pub fn ten_crop<T: Copy>(img: &Chw<T>, h: usize, w: usize) -> Result<Vec<Chw<T>>, TransformError> {
    let five = |im: &Chw<T>| -> Result<Vec<Chw<T>>, TransformError> {
        let [_, ih, iw] = im.shape;
        fits(im, h, w)?;
        Ok(vec![
            crop(im, 0, 0, h, w)?,
            crop(im, 0, iw - w, h, w)?,
            crop(im, ih - h, 0, h, w)?,
            crop(im, ih - h, iw - w, h, w)?,
            center_crop(im, h, w)?,
        ])
    };
    let mut crops = five(img)?;
    crops.extend(five(&hflip(img))?);
    Ok(crops)
}

/// Average over crops of the softmax of each crop's logits. `logits` is
/// `[samples, crops, classes]` row-major; the result is `[samples, classes]`, each row a
/// probability vector. The softmax subtracts the row maximum, so large logits do not overflow.
pub fn mean_softmax(
    logits: &[f32],
    crops: usize,
    classes: usize,
) -> Result<Vec<f32>, TransformError> {
    let per_sample = crops * classes;
    if crops == 0 || classes == 0 || !logits.len().is_multiple_of(per_sample) {
        return Err(TransformError::Logits {
            found: logits.len(),
            crops,
            classes,
        });
    }
    let mut out = Vec::with_capacity(logits.len() / crops);
    for sample in logits.chunks_exact(per_sample) {
        let mut acc = vec![0f64; classes];
        for row in sample.chunks_exact(classes) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f64> = row.iter().map(|&z| ((z - max) as f64).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for (a, e) in acc.iter_mut().zip(&exps) {
                *a += e / sum;
            }
        }
        out.extend(acc.iter().map(|&a| (a / crops as f64) as f32));
    }
    Ok(out)
}

/// torchvision's ImageNet channel means and standard deviations (for inputs in `[0, 1]`), the
/// normalisation the model-zoo VGG-16 expects.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One training view: a random `h`×`w` crop, a random mirror, then per-channel normalisation.
/// Draws from `rng` in that order (top, left, flip), so a seeded stream is reproducible.
pub fn train_view<R: Rng + ?Sized>(
    img: &Chw,
    h: usize,
    w: usize,
    mean: &[f32],
    std: &[f32],
    rng: &mut R,
) -> Result<Chw, TransformError> {
    let cropped = random_crop(img, h, w, rng)?;
    let mut view = random_hflip(&cropped, rng);
    normalize(&mut view, mean, std)?;
    Ok(view)
}

/// The ten normalised test views of [`ten_crop`], in its order; score them with
/// [`mean_softmax`] over 10 crops.
pub fn ten_crop_views(
    img: &Chw,
    h: usize,
    w: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<Vec<Chw>, TransformError> {
    let mut crops = ten_crop(img, h, w)?;
    for c in &mut crops {
        normalize(c, mean, std)?;
    }
    Ok(crops)
}
