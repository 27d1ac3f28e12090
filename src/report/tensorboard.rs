//! TensorBoard event files (`report --tensorboard DIR`), so that `tensorboard --logdir DIR`
//! shows every training curve and final metric. No maintained Rust crate writes them (the
//! `tensorboard-rs` crate is unmaintained since 2020 and pulls a protobuf code generator), and
//! the format is small: a TFRecord file of `Event` protobufs. Each record is its length (u64,
//! little-endian), the masked CRC32C of the length, the bytes, and their masked CRC32C; an
//! `Event` here uses five fields (wall time, step, file version, and a summary of tagged
//! scalar values), encoded below by hand and read back by the `tensorboard` Python package in
//! `tests/tensorboard.rs`.

use std::io::Write;
use std::path::Path;

/// TFRecord's checksum: CRC32C, rotated right by 15 bits plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: i64, body: Result<&str, &[(String, f32)]>) -> Vec<u8> {
    let mut e = Vec::new();
    e.push((1 << 3) | 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(2 << 3);
    varint(step as u64, &mut e);
    match body {
        Ok(version) => bytes_field(3, version.as_bytes(), &mut e),
        Err(values) => {
            // Summary { repeated Value value = 1 }, Value { tag = 1, simple_value = 2 (float) }.
            let mut summary = Vec::new();
            for (tag, v) in values {
                let mut value = Vec::new();
                bytes_field(1, tag.as_bytes(), &mut value);
                value.push((2 << 3) | 5);
                value.extend_from_slice(&v.to_le_bytes());
                bytes_field(1, &value, &mut summary);
            }
            bytes_field(5, &summary, &mut e);
        }
    }
    e
}

fn record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// One run's scalars: `(step, tag, value)`, written as one event per step.
pub struct Run {
    /// The run's folder under the log dir (`rnf@threshold=0.05/seed0`).
    pub name: String,
    pub scalars: Vec<(i64, String, f32)>,
}

/// Write `runs` under `dir`, one event file per run, every event stamped `wall_time`
/// (seconds since the epoch).
pub fn write(dir: &Path, runs: &[Run], wall_time: f64) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for run in runs {
        let folder = dir.join(&run.name);
        std::fs::create_dir_all(&folder)?;
        let mut buf = Vec::new();
        record(&event(wall_time, 0, Ok("brain.Event:2")), &mut buf);
        let mut steps: Vec<i64> = run.scalars.iter().map(|s| s.0).collect();
        steps.sort();
        steps.dedup();
        for step in steps {
            let values: Vec<(String, f32)> = run
                .scalars
                .iter()
                .filter(|s| s.0 == step)
                .map(|s| (s.1.clone(), s.2))
                .collect();
            record(&event(wall_time, step, Err(&values)), &mut buf);
        }
        let path = folder.join("events.out.tfevents.cfpipe");
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&buf)?;
        files.push(path);
    }
    Ok(files)
}

/// Every run's scalars: per task its training loss and accuracy per epoch (steps count epochs
/// through the task sequence, as in the `training_curves` figure), and per task the mean
/// accuracy over the tasks seen and the free capacity after it (steps are tasks, 1-based).
pub fn runs(results: &[super::RunResult]) -> Vec<Run> {
    results
        .iter()
        .map(|r| {
            let mut scalars = Vec::new();
            let mut offset = 0i64;
            for (t, c) in r.curves.iter().enumerate() {
                let task = if r.joint {
                    "joint".to_string()
                } else {
                    format!("task{}", t + 1)
                };
                let n = c.as_ref().map_or(0, |c| c.len()) as i64;
                for e in c.iter().flatten() {
                    let step = offset + e.epoch as i64;
                    scalars.push((step, format!("train/loss/{task}"), e.mean_loss as f32));
                    scalars.push((
                        step,
                        format!("train/accuracy/{task}"),
                        e.train_accuracy as f32,
                    ));
                }
                offset += n;
            }
            for (i, row) in r.accuracy.iter().enumerate() {
                if let Some(row) = row.as_ref().filter(|row| !row.is_empty()) {
                    let mean = row.iter().sum::<f64>() / row.len() as f64;
                    scalars.push((i as i64 + 1, "eval/mean_accuracy".into(), mean as f32));
                }
                if let Some(Some(free)) = r.free_capacity.get(i) {
                    scalars.push((i as i64 + 1, "eval/free_capacity".into(), *free as f32));
                }
            }
            Run {
                name: format!("{}/seed{}", r.strategy, r.seed),
                scalars,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_checksum_matches_tensorflows() {
        // TensorFlow's crc32c_test: the CRC32C of 32 zero bytes is 0x8a9136aa.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        // "abc": CRC32C 0x364b3fb7, masked (computed apart, bit by bit) 0x21f1576e.
        assert_eq!(crc32c::crc32c(b"abc"), 0x364b_3fb7);
        assert_eq!(masked_crc(b"abc"), 0x21f1_576e);
    }

    #[test]
    fn varints_are_protobufs() {
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
    }
}
