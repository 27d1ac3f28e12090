//! Freezing masks the update: frozen units keep their exact bits through the next task's
//! training with Adam and L2 on, and pruning never touches the stored model.

mod common;
use common::Fixture;

use common::{model_at as model, unit_flags as flags};

#[test]
fn frozen_units_are_bit_identical_after_the_next_task_with_adam_and_l2() {
    let f = Fixture::new();
    f.run(&[]);
    let e = f.entries();
    let before = model(&e("rnf/seed0/task1/train"));
    let after = model(&e("rnf/seed0/task2/train"));
    let mask = e("rnf/seed0/task1/mask");
    let (mut frozen_seen, mut free_moved) = (0, 0);
    for l in 0..before.trunk.len() {
        let fl = flags(&mask, l);
        let (b, a) = (&before.trunk[l], &after.trunk[l]);
        for (j, &frozen) in fl.iter().enumerate() {
            let row = j * b.in_dim..(j + 1) * b.in_dim;
            let same = b.weight[row.clone()]
                .iter()
                .zip(&a.weight[row])
                .all(|(x, y)| x.to_bits() == y.to_bits())
                && b.bias[j].to_bits() == a.bias[j].to_bits();
            if frozen {
                assert!(same, "frozen unit {j} of layer {l} moved");
                frozen_seen += 1;
            } else if !same {
                free_moved += 1;
            }
        }
    }
    assert!(frozen_seen > 0, "the fixture must freeze something");
    assert!(
        free_moved > 0,
        "free units must train (else this test proves nothing)"
    );
    // The old head is never updated, not even by weight decay.
    assert_eq!(before.heads[0], after.heads[0]);
    // Naive training moves the same units (so the mask, not the data, kept them still).
    let naive = model(&e("naive/seed0/task2/train"));
    assert_ne!(naive.trunk[0].weight, before.trunk[0].weight);
}

#[test]
fn the_next_task_starts_from_the_unpruned_model() {
    let f = Fixture::new();
    f.run(&[]);
    let e = f.entries();
    let t1 = e("rnf/seed0/task1/train");
    let t2 = e("rnf/seed0/task2/train");
    // Task 2 trained from exactly the task-1 model's bytes...
    assert_eq!(t2.manifest().unwrap().inputs["model"], t1.content_hash());
    // ...in which the pruned units' outgoing connections are intact (restored = never zeroed).
    let prune = e("rnf/seed0/task1/prune");
    let m = model(&t1);
    let mut pruned_checked = 0;
    for l in 0..m.trunk.len() {
        let next = if l + 1 < m.trunk.len() {
            &m.trunk[l + 1]
        } else {
            &m.heads[0]
        };
        for (j, p) in flags(&prune, l).into_iter().enumerate() {
            if p {
                let outgoing: Vec<f32> = (0..next.out_dim)
                    .map(|k| next.weight[k * next.in_dim + j])
                    .collect();
                assert!(outgoing.iter().any(|&w| w != 0.0));
                pruned_checked += 1;
            }
        }
    }
    assert!(pruned_checked > 0, "the fixture must prune something");
}
