//! Continual-learning scenarios: how a sequence of tasks maps onto a model's output units
//! (`model.heads`). The scenario is a property of the model, stored beside its tensors, so
//! every stage that reads a trained model (evaluate, score, prune, correlate, …) finds the
//! head and the label space of each task without a parameter of its own.
//!
//! - `per_task` (task-incremental, the default and the RNF paper's setting): task `t` has its
//!   own head `t` over its own classes; evaluation is told the task.
//! - `shared`: one head for all tasks, over each task's own (local) class indices; every task
//!   must have the same number of classes. With permuted tasks this is domain-incremental.
//! - `class_incremental`: one head over the classes of all tasks, task after task (task `t`'s
//!   local class `c` is output `offset(t) + c`, where `offset(t)` counts the earlier tasks'
//!   classes); evaluation is not told the task. Its outputs either exist from the start
//!   (`upfront`: every task's classes, trained from task 1 on) or `grow` by the new task's
//!   classes when it starts (as Avalanche's incremental classifier). Growth only appends rows:
//!   the existing outputs keep their weights bit for bit.
//!
//! Output units are initialised per task from the same seeded stream a per-task head always
//! had (`rng(seed, t, "head")`), so a grown head's rows for task `t` equal what task `t`'s own
//! head would have started from.

use super::model::{DenseParams, ModelParams};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// How tasks share output units; keyed (through the model spec and the model's content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "heads", rename_all = "snake_case")]
pub enum Scenario {
    /// One head per task (task-incremental).
    #[default]
    PerTask,
    /// One head, local class indices, for every task.
    Shared,
    /// One head over all classes, evaluated without the task.
    ClassIncremental { outputs: ClassOutputs },
}

/// When a class-incremental head gets the output units of a task's classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassOutputs {
    /// The new task's classes are appended when it starts.
    #[default]
    Grow,
    /// Every task's classes exist (and train) from task 1 on.
    Upfront,
}

impl Scenario {
    pub fn is_per_task(&self) -> bool {
        *self == Scenario::PerTask
    }

    pub fn is_class_incremental(&self) -> bool {
        matches!(self, Scenario::ClassIncremental { .. })
    }

    /// Whether the head gains outputs with each task (class-incremental, `class_outputs:
    /// grow`): an earlier task's record of it (a penalty, importances) covers fewer outputs.
    pub fn grows(&self) -> bool {
        *self
            == Scenario::ClassIncremental {
                outputs: ClassOutputs::Grow,
            }
    }

    /// How many of a model's layers every task trains, of a trunk of `trunk` layers and its
    /// heads: the trunk, and the one head unless each task has its own.
    pub fn shared_layers(&self, trunk: usize) -> usize {
        trunk + usize::from(!self.is_per_task())
    }

    /// Whether tasks with `classes[t]` classes each can share this scenario's outputs: a
    /// shared head needs the same number of classes in every task.
    pub fn check(&self, classes: &[usize]) -> Result<(), String> {
        match (self, classes.first()) {
            (Scenario::Shared, Some(&k)) if classes.iter().any(|&c| c != k) => Err(format!(
                "a shared head needs the same number of classes in every task, found {classes:?}; use `heads: class_incremental` for tasks with classes of their own"
            )),
            _ => Ok(()),
        }
    }

    /// The head task `t`'s samples go through.
    pub fn head(&self, t: usize) -> usize {
        match self {
            Scenario::PerTask => t,
            _ => 0,
        }
    }

    /// The head's output of task `t`'s local class 0; `classes[j]` is task `j`'s class count.
    pub fn offset(&self, classes: &[usize], t: usize) -> usize {
        match self {
            Scenario::ClassIncremental { .. } => classes[..t.min(classes.len())].iter().sum(),
            _ => 0,
        }
    }

    /// The distinct heads tasks `0..tasks` use, in order.
    pub fn heads_of(&self, tasks: usize) -> std::ops::Range<usize> {
        match self {
            Scenario::PerTask => 0..tasks,
            _ => 0..tasks.min(1),
        }
    }

    /// The output count of every head once tasks `0..=t` have been trained.
    pub fn head_widths(&self, classes: &[usize], t: usize) -> Vec<usize> {
        let seen = &classes[..(t + 1).min(classes.len())];
        match self {
            Scenario::PerTask => seen.to_vec(),
            Scenario::Shared => seen.first().copied().into_iter().collect(),
            Scenario::ClassIncremental {
                outputs: ClassOutputs::Grow,
            } => vec![seen.iter().sum()],
            Scenario::ClassIncremental {
                outputs: ClassOutputs::Upfront,
            } => vec![classes.iter().sum()],
        }
    }

    /// Adds the output units that task `t` brings (see the module doc), drawing them from
    /// `rng`; nothing where the task's outputs exist already.
    pub fn add_outputs(
        &self,
        m: &mut ModelParams,
        classes: &[usize],
        t: usize,
        rng: &mut impl Rng,
    ) {
        let fresh = match self {
            Scenario::PerTask => Some(classes[t]),
            Scenario::Shared if t == 0 => Some(classes[0]),
            Scenario::ClassIncremental {
                outputs: ClassOutputs::Grow,
            } => Some(classes[t]),
            Scenario::ClassIncremental {
                outputs: ClassOutputs::Upfront,
            } if t == 0 => Some(classes.iter().sum()),
            _ => None,
        };
        let Some(k) = fresh else { return };
        match (self, m.heads.first_mut()) {
            (Scenario::ClassIncremental { .. }, Some(head)) => {
                let rows = DenseParams::init(head.in_dim, k, rng);
                head.weight.extend(rows.weight);
                head.bias.extend(rows.bias);
                head.out_dim += k;
            }
            _ => m.push_head(k, rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng(t: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(t)
    }

    fn grown(s: Scenario, classes: &[usize], through: usize) -> ModelParams {
        let mut m = ModelParams::init(4, &[3], &mut rng(99));
        for t in 0..=through {
            s.add_outputs(&mut m, classes, t, &mut rng(t as u64));
        }
        m
    }

    #[test]
    fn each_scenario_has_the_heads_it_promises_after_every_task() {
        let classes = [2, 3, 2];
        let grow = Scenario::ClassIncremental {
            outputs: ClassOutputs::Grow,
        };
        let upfront = Scenario::ClassIncremental {
            outputs: ClassOutputs::Upfront,
        };
        for s in [Scenario::PerTask, Scenario::Shared, grow, upfront] {
            for t in 0..3 {
                let m = grown(s, &classes, t);
                let widths: Vec<usize> = m.heads.iter().map(|h| h.out_dim).collect();
                assert_eq!(widths, s.head_widths(&classes, t), "{s:?} after task {t}");
            }
        }
        assert_eq!(grow.head_widths(&classes, 1), vec![5]);
        assert_eq!(upfront.head_widths(&classes, 0), vec![7]);
        assert_eq!(grow.offset(&classes, 2), 5);
        assert_eq!(Scenario::Shared.offset(&classes, 2), 0);
        assert_eq!(
            (Scenario::Shared.head(2), Scenario::PerTask.head(2)),
            (0, 2)
        );
    }

    #[test]
    fn a_grown_head_keeps_its_old_rows_and_starts_new_ones_as_a_task_head_would() {
        let classes = [2, 3];
        let grow = Scenario::ClassIncremental {
            outputs: ClassOutputs::Grow,
        };
        let before = grown(grow, &classes, 0);
        let after = grown(grow, &classes, 1);
        let per_task = grown(Scenario::PerTask, &classes, 1);
        let (old, new) = after.heads[0].weight.split_at(2 * 3);
        assert_eq!(old, &before.heads[0].weight[..]);
        assert_eq!(new, &per_task.heads[1].weight[..]);
        assert_eq!(&after.heads[0].bias[2..], &per_task.heads[1].bias[..]);
    }
}
