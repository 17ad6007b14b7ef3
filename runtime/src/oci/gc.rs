//! Image garbage collection by disk thresholds, as the kubelet does it:
//! when the image store's filesystem is fuller than the high threshold,
//! images no container uses are removed, least recently used first, until
//! usage is down to the low threshold. [`plan`] decides (pure);
//! `ImageStore::gc` measures and removes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

/// The kubelet's defaults (`imageGCHighThresholdPercent`, `…Low…`).
pub const DEFAULT_HIGH_PERCENT: u8 = 85;
pub const DEFAULT_LOW_PERCENT: u8 = 80;

/// An image as garbage collection sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub reference: String,
    pub layers: Vec<String>,
    pub last_used: SystemTime,
}

/// The filesystem the images live on.
#[derive(Debug, Clone, Copy)]
pub struct Disk {
    pub used: u64,
    pub total: u64,
}

/// What to remove: the references of unused images, oldest use first, until
/// the bytes their unshared layers hold bring usage to `low` percent; none
/// while usage is under `high` percent. `in_use` are references containers
/// use; `layer_bytes` the size of each layer.
pub fn plan(
    images: &[Candidate],
    in_use: &BTreeSet<String>,
    layer_bytes: &BTreeMap<String, u64>,
    disk: Disk,
    high: u8,
    low: u8,
) -> Vec<String> {
    if disk.total == 0 || disk.used * 100 < disk.total * u64::from(high) {
        return Vec::new();
    }
    let target = disk.total * u64::from(low.min(high)) / 100;
    let mut to_free = disk.used.saturating_sub(target);
    let mut unused: Vec<&Candidate> = images
        .iter()
        .filter(|i| !in_use.contains(&i.reference))
        .collect();
    unused.sort_by_key(|i| i.last_used);
    // how many kept images hold each layer
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for i in images {
        for l in &i.layers {
            *holders.entry(l.as_str()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for i in unused {
        if to_free == 0 {
            break;
        }
        let mut freed = 0;
        for l in &i.layers {
            let n = holders.entry(l.as_str()).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 {
                freed += layer_bytes.get(l).copied().unwrap_or(0);
            }
        }
        out.push(i.reference.clone());
        to_free = to_free.saturating_sub(freed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn image(r: &str, layers: &[&str], age: u64) -> Candidate {
        Candidate {
            reference: r.into(),
            layers: layers.iter().map(|l| l.to_string()).collect(),
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age),
        }
    }

    #[test]
    fn nothing_goes_below_the_high_threshold() {
        let images = [image("a", &["l1"], 10)];
        let sizes = BTreeMap::from([("l1".to_string(), 50)]);
        let disk = Disk {
            used: 84,
            total: 100,
        };
        assert!(plan(&images, &BTreeSet::new(), &sizes, disk, 85, 80).is_empty());
    }

    #[test]
    fn unused_images_go_oldest_first_until_the_low_threshold() {
        let images = [
            image("new", &["l1"], 1),
            image("old", &["l2"], 100),
            image("older", &["l3"], 1000),
            image("running", &["l4"], 5000),
        ];
        let sizes: BTreeMap<String, u64> = [("l1", 3), ("l2", 3), ("l3", 3), ("l4", 50)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let in_use = BTreeSet::from(["running".to_string()]);
        // 90% used: 10 bytes to free to reach 80%
        let disk = Disk {
            used: 90,
            total: 100,
        };
        assert_eq!(
            plan(&images, &in_use, &sizes, disk, 85, 80),
            vec!["older", "old", "new"]
        );
        // 6 bytes: the two oldest unused images are enough
        let disk = Disk {
            used: 86,
            total: 100,
        };
        assert_eq!(
            plan(&images, &in_use, &sizes, disk, 85, 80),
            vec!["older", "old"]
        );
    }

    #[test]
    fn a_layer_shared_with_a_kept_image_frees_nothing() {
        let images = [image("a", &["base", "x"], 100), image("b", &["base"], 1)];
        let sizes: BTreeMap<String, u64> = [("base", 40), ("x", 1)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let in_use = BTreeSet::from(["b".to_string()]);
        let disk = Disk {
            used: 90,
            total: 100,
        };
        // removing a frees only x; nothing else may go
        assert_eq!(plan(&images, &in_use, &sizes, disk, 85, 80), vec!["a"]);
    }
}
