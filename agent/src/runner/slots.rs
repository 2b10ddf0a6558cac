//! Concurrency slot numbers of one runner (`concurrent-<n>` in container names, build dirs).

use std::sync::{Arc, Mutex};

/// Hands out the lowest free slot number; the [`Slot`] gives it back on drop.
#[derive(Debug, Default, Clone)]
pub struct Slots {
    used: Arc<Mutex<Vec<bool>>>,
}

/// A slot number held until dropped.
#[derive(Debug)]
pub struct Slot {
    n: u32,
    used: Arc<Mutex<Vec<bool>>>,
}

impl Slots {
    /// Takes the lowest free number.
    pub fn take(&self) -> Slot {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let n = match used.iter().position(|u| !*u) {
            Some(i) => i,
            None => {
                used.push(false);
                used.len() - 1
            }
        };
        used[n] = true;
        Slot {
            n: u32::try_from(n).unwrap_or(u32::MAX),
            used: self.used.clone(),
        }
    }
}

impl Slot {
    pub fn number(&self) -> u32 {
        self.n
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = used.get_mut(self.n as usize) {
            *u = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_number_is_reused() {
        let s = Slots::default();
        let a = s.take();
        let b = s.take();
        assert_eq!((a.number(), b.number()), (0, 1));
        drop(a);
        let c = s.take();
        let d = s.take();
        assert_eq!((c.number(), d.number(), b.number()), (0, 2, 1));
    }
}
