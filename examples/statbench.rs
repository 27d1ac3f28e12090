use rayon::prelude::*;
use std::time::Instant;
fn main() {
    let root = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let mut files = vec![];
    for a in std::fs::read_dir(root.join("entries")).unwrap() {
        for e in std::fs::read_dir(a.unwrap().path()).unwrap() {
            let d = e.unwrap().path();
            for f in ["manifest.json", "aux/log.txt"] {
                if d.join(f).exists() {
                    files.push(d.join(f));
                }
            }
            for f in std::fs::read_dir(d.join("out")).unwrap() {
                files.push(f.unwrap().path());
            }
        }
    }
    for _ in 0..4 {
        let t = Instant::now();
        let s: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        let a = t.elapsed();
        let t = Instant::now();
        let s2: u64 = files
            .par_iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        let b = t.elapsed();
        let t = Instant::now();
        let s3: u64 = std::thread::scope(|sc| {
            let (x, y) = files.split_at(files.len() / 2);
            let h = sc.spawn(|| {
                x.iter()
                    .map(|f| std::fs::metadata(f).unwrap().len())
                    .sum::<u64>()
            });
            let b: u64 = y.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
            h.join().unwrap() + b
        });
        let c = t.elapsed();
        println!(
            "{} files: serial {a:?}, rayon {b:?}, two threads {c:?} ({s} {s2} {s3})",
            files.len()
        );
    }
}
