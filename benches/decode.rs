//! Image decoding throughput, as a plain harness (`cargo bench --bench decode`): JPEG decode,
//! conversion to RGB, resize and crop to a CHW `u8` sample, through the same
//! `ImageIndex::decode` the datasets use, on rayon pools of 1 and 2 threads. Two workloads:
//! ImageNet-like 500×375 photos to 224×224 (`center_crop`, shorter side 256, torchvision's
//! evaluation transform) and Adience-like 816×816 aligned faces to 256×256 (`stretch`). The
//! JPEGs are synthesised (smooth gradients plus seeded noise, quality 90) in a temp dir, so
//! their size is realistic (tens of kB); the figure is images per second, median of 5 runs.

use cfpipe::data::image_folder::{index_image_folder, DecodeOptions, ImageIndex, ResizePolicy};
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

const IMAGES: usize = 48;

fn write_jpegs(root: &Path, w: u32, h: u32) -> u64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut bytes = 0;
    for i in 0..IMAGES {
        let img = RgbImage::from_fn(w, h, |x, y| {
            let n: i32 = rng.gen_range(-20..20);
            let v = |base: u32| ((base as i32 + n).clamp(0, 255)) as u8;
            Rgb([
                v(x * 255 / w),
                v(y * 255 / h),
                v((x + y + i as u32 * 7) % 256),
            ])
        });
        let dir = root.join(format!("class{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{i}.jpg"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        drop(out);
        bytes += std::fs::metadata(&path).unwrap().len();
    }
    bytes
}

fn images_per_s(index: &ImageIndex, opts: &DecodeOptions, threads: usize) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        index.decode_all(opts).unwrap(); // warm the page cache
        let mut rates: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let set = index.decode_all(opts).unwrap();
                assert_eq!(set.len(), IMAGES);
                IMAGES as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    })
}

fn main() {
    let workloads = [
        (
            "ImageNet-like 500x375 -> 224 (center_crop, shorter side 256)",
            500,
            375,
            DecodeOptions {
                size: 224,
                resize: ResizePolicy::CenterCrop,
                shorter_side: Some(256),
            },
        ),
        (
            "Adience-like 816x816 -> 256 (stretch)",
            816,
            816,
            DecodeOptions::new(256, ResizePolicy::Stretch),
        ),
    ];
    for (name, w, h, opts) in workloads {
        let dir = tempfile::tempdir().unwrap();
        let bytes = write_jpegs(dir.path(), w, h);
        let index = index_image_folder(dir.path(), None, 0).unwrap();
        println!(
            "{name}: {IMAGES} JPEGs, mean {:.0} kB",
            bytes as f64 / IMAGES as f64 / 1e3
        );
        for threads in [1, 2] {
            println!(
                "  {threads} thread(s): {:.0} images/s",
                images_per_s(&index, &opts, threads)
            );
        }
    }
}
