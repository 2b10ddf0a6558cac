//! What the collector removes: a pure function of the objects, their sizes and last uses,
//! the budget, the clock and the space still needed.
//!
//! Per kind (volumes, images): first every unprotected object idle longer than the kind's
//! age bound; then, while the kind's total (protected objects included: they take the
//! space too) exceeds its size bound, the least recently used unprotected ones. Then, when
//! the disk is low and less than `need_bytes` was freed, more of the least recently used
//! unprotected objects of either kind until it is (a full disk stops every job; a builds
//! volume costs only a fresh copy, an image a pull).

use serde::{Deserialize, Serialize};

use super::budget::{DiskBudget, Limit};

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    Volume,
    Image,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Volume => "volume",
            ItemKind::Image => "image",
        }
    }
}

/// One object the collector may consider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub kind: ItemKind,
    /// Volume name or image id.
    pub name: String,
    pub bytes: u64,
    /// Unix seconds.
    pub last_used: i64,
    /// Why it must stay (`a running job uses it`), if it must.
    pub protected: Option<String>,
}

/// Why an object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Why {
    /// Unused for longer than the age bound.
    Idle,
    /// The kind is over its size bound; this is its least recently used object.
    OverBudget,
    /// Free space below the threshold; this is among the least recently used objects.
    DiskLow,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Idle => "idle",
            Why::OverBudget => "over budget",
            Why::DiskLow => "disk low",
        }
    }
}

/// One removal: the index of the candidate and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub index: usize,
    pub why: Why,
}

/// The removals, in the order to make them.
pub fn plan(cands: &[Candidate], budget: &DiskBudget, now: i64, need_bytes: u64) -> Vec<Decision> {
    let mut out: Vec<Decision> = Vec::new();
    let mut gone = vec![false; cands.len()];
    let lru = |kind: Option<ItemKind>| {
        let mut idx: Vec<usize> = (0..cands.len())
            .filter(|&i| cands[i].protected.is_none() && kind.is_none_or(|k| cands[i].kind == k))
            .collect();
        idx.sort_by(|&a, &b| {
            (cands[a].last_used, &cands[a].name).cmp(&(cands[b].last_used, &cands[b].name))
        });
        idx
    };
    for (kind, limit) in [
        (ItemKind::Volume, budget.volumes),
        (ItemKind::Image, budget.images),
    ] {
        let Limit {
            max_bytes,
            max_idle_secs,
        } = limit;
        let order = lru(Some(kind));
        if max_idle_secs > 0 {
            for &i in &order {
                let idle = now.saturating_sub(cands[i].last_used);
                if idle > 0 && idle as u64 > max_idle_secs {
                    gone[i] = true;
                    out.push(Decision {
                        index: i,
                        why: Why::Idle,
                    });
                }
            }
        }
        let mut total: u64 = cands
            .iter()
            .enumerate()
            .filter(|(i, c)| c.kind == kind && !gone[*i])
            .fold(0u64, |t, (_, c)| t.saturating_add(c.bytes));
        for &i in &order {
            if total <= max_bytes {
                break;
            }
            if gone[i] {
                continue;
            }
            gone[i] = true;
            total = total.saturating_sub(cands[i].bytes);
            out.push(Decision {
                index: i,
                why: Why::OverBudget,
            });
        }
    }
    let mut freed: u64 = out
        .iter()
        .fold(0u64, |t, d| t.saturating_add(cands[d.index].bytes));
    if freed < need_bytes {
        for i in lru(None) {
            if freed >= need_bytes {
                break;
            }
            if gone[i] {
                continue;
            }
            gone[i] = true;
            freed = freed.saturating_add(cands[i].bytes);
            out.push(Decision {
                index: i,
                why: Why::DiskLow,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: ItemKind, name: &str, bytes: u64, last_used: i64) -> Candidate {
        Candidate {
            kind,
            name: name.into(),
            bytes,
            last_used,
            protected: None,
        }
    }

    fn budget(vol_max: u64, img_max: u64, idle: u64) -> DiskBudget {
        DiskBudget {
            volumes: Limit {
                max_bytes: vol_max,
                max_idle_secs: idle,
            },
            images: Limit {
                max_bytes: img_max,
                max_idle_secs: idle,
            },
            remove_foreign_images: false,
        }
    }

    fn names(cands: &[Candidate], d: &[Decision]) -> Vec<(String, Why)> {
        d.iter()
            .map(|d| (cands[d.index].name.clone(), d.why))
            .collect()
    }

    #[test]
    fn under_budget_and_fresh_nothing_goes() {
        let cands = [
            c(ItemKind::Volume, "a", 10, 100),
            c(ItemKind::Image, "i", 10, 100),
        ];
        assert!(plan(&cands, &budget(100, 100, 1000), 200, 0).is_empty());
    }

    #[test]
    fn over_budget_least_recently_used_first_protected_stay_but_count() {
        let mut cands = vec![
            c(ItemKind::Volume, "old", 40, 10),
            c(ItemKind::Volume, "running", 40, 5),
            c(ItemKind::Volume, "mid", 40, 20),
            c(ItemKind::Volume, "new", 40, 30),
        ];
        cands[1].protected = Some("a running job uses it".into());
        // 160 bytes against 90: "running" stays (counted), "old" then "mid" go.
        let d = plan(&cands, &budget(90, 1000, 0), 100, 0);
        assert_eq!(
            names(&cands, &d),
            vec![
                ("old".into(), Why::OverBudget),
                ("mid".into(), Why::OverBudget)
            ]
        );
    }

    #[test]
    fn idle_objects_go_whatever_the_size() {
        let cands = [
            c(ItemKind::Image, "stale", 1, 0),
            c(ItemKind::Image, "fresh", 1, 950),
        ];
        let d = plan(&cands, &budget(1000, 1000, 100), 1000, 0);
        assert_eq!(names(&cands, &d), vec![("stale".into(), Why::Idle)]);
        // No age bound: nothing goes.
        assert!(plan(&cands, &budget(1000, 1000, 0), 1000, 0).is_empty());
    }

    #[test]
    fn disk_low_takes_more_across_kinds_until_enough_is_freed() {
        let mut cands = vec![
            c(ItemKind::Volume, "v1", 30, 10),
            c(ItemKind::Image, "i1", 50, 5),
            c(ItemKind::Volume, "v2", 30, 20),
            c(ItemKind::Image, "req", 500, 1),
        ];
        cands[3].protected = Some("a runner spec requires it".into());
        let d = plan(&cands, &budget(1000, 1000, 0), 100, 60);
        assert_eq!(
            names(&cands, &d),
            vec![("i1".into(), Why::DiskLow), ("v1".into(), Why::DiskLow)]
        );
        // More needed than there is: everything unprotected goes, the protected stays.
        let d = plan(&cands, &budget(1000, 1000, 0), 100, 10_000);
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|d| cands[d.index].name != "req"));
    }
}
