//! `training.record_replay`: a training stores what a replay in PyTorch needs
//! (`scripts/torch_crosscheck.py`), and recording it changes nothing it trains.

mod common;

use common::{Fixture, PIPELINE};

fn recording() -> Fixture {
    Fixture::with_pipeline(&PIPELINE.replace(
        "  weight_decay: 0.001\n",
        "  weight_decay: 0.001\n  record_replay: true\n",
    ))
}

#[test]
fn recording_a_replay_trains_the_same_bits_and_records_every_step() {
    let plain = Fixture::new();
    plain.run(&[]);
    let rec = recording();
    rec.run(&[]);
    for id in ["naive/seed0/task1/train", "rnf/seed0/task2/train"] {
        assert_eq!(
            plain.output(id, "model.safetensors"),
            rec.output(id, "model.safetensors"),
            "{id}: the recorded training trained other weights"
        );
    }

    let replay = |id: &str| rec.json_of(id, "replay.json");
    let report = |id: &str| rec.json_of(id, "train.json");
    for id in ["naive/seed0/task1/train", "rnf/seed0/task2/train"] {
        let r = replay(id);
        let steps = r["steps"].as_array().unwrap();
        assert_eq!(steps.len() as u64, report(id)["steps"].as_u64().unwrap());
        // Every epoch visits each training sample once, in batches of at most 16.
        let epochs = 3;
        let per_epoch = steps.len() / epochs;
        for e in 0..epochs {
            let mut seen: Vec<u64> = steps[e * per_epoch..(e + 1) * per_epoch]
                .iter()
                .inspect(|b| assert!(b.as_array().unwrap().len() <= 16))
                .flat_map(|b| b.as_array().unwrap().iter().map(|i| i.as_u64().unwrap()))
                .collect();
            seen.sort();
            assert!(
                seen.iter().enumerate().all(|(k, &i)| k as u64 == i),
                "{id}, epoch {e}"
            );
        }
        assert_eq!(r["plain"], true);
    }
    // Task 2 of RNF trains under its mask: the frozen units are the ones the training froze.
    let frozen: Vec<u64> = replay("rnf/seed0/task2/train")["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l.as_array()
                .unwrap()
                .iter()
                .filter(|b| b.as_bool().unwrap())
                .count() as u64
        })
        .collect();
    let reported: Vec<u64> = report("rnf/seed0/task2/train")["frozen_units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(frozen, reported);
    assert!(frozen.iter().sum::<u64>() > 0);
    // The initial weights of naive's task 2 are task 1's trained trunk, plus a new head.
    let decode =
        |id: &str, file: &str| cfpipe::nn::tensorio::decode(&rec.output(id, file)).unwrap();
    let start = decode("naive/seed0/task2/train", "replay_initial.safetensors");
    let task1 = decode("naive/seed0/task1/train", "model.safetensors");
    for name in ["trunk.0.weight", "trunk.1.bias", "heads.0.weight"] {
        assert_eq!(start.get(name), task1.get(name), "{name}");
    }
    assert!(start.contains_key("heads.1.weight") && !task1.contains_key("heads.1.weight"));
}

#[test]
fn a_replay_of_augmented_training_is_a_located_error() {
    let text = PIPELINE.replace(
        "  weight_decay: 0.001\n",
        "  weight_decay: 0.001\n  record_replay: true\n  sampling: {kind: balanced}\n",
    );
    let f = Fixture::with_pipeline(&text);
    let o = f.cli(&["status", f.pipeline().to_str().unwrap()]);
    let e = common::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("training.record_replay") && e.contains("plain MLP training"),
        "{e}"
    );
}
