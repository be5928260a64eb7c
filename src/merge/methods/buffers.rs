//! f32 buffers reused from tensor to tensor. A merge makes the same few buffer sizes over and
//! over (each input's rows, each delta, the result); allocated fresh, every buffer of tens of
//! MiB is a fresh mapping whose every page faults and is zeroed by the kernel, a cost measured
//! at a tenth of a three-model DARE merge, all of it on the one thread that feeds the others.

use std::sync::Mutex;

/// Spare buffers kept at most: enough for the buffers of one tensor of a many-model merge.
const MAX_SPARE: usize = 32;

/// A pool of spare `Vec<f32>`; `take` hands one out, `give` takes it back.
#[derive(Default)]
pub struct BufferPool {
    spare: Mutex<Vec<Vec<f32>>>,
}

impl BufferPool {
    /// A buffer of `len` elements. Its values are not specified (what an earlier user left, or
    /// zeros): the caller writes every element before reading any.
    pub fn take(&self, len: usize) -> Vec<f32> {
        let found = {
            let mut spare = self.spare.lock().expect("buffer pool lock");
            // The smallest spare that holds `len` without growing, else the largest.
            let fits = (0..spare.len())
                .filter(|&k| spare[k].capacity() >= len)
                .min_by_key(|&k| spare[k].capacity());
            let pick = fits.or_else(|| (0..spare.len()).max_by_key(|&k| spare[k].capacity()));
            pick.map(|k| spare.swap_remove(k))
        };
        let mut buf = found.unwrap_or_default();
        buf.resize(len, 0.0);
        buf
    }

    /// Take back buffers for later `take`s (beyond `MAX_SPARE`, the smallest are freed).
    pub fn give(&self, bufs: impl IntoIterator<Item = Vec<f32>>) {
        let mut spare = self.spare.lock().expect("buffer pool lock");
        spare.extend(bufs.into_iter().filter(|b| b.capacity() > 0));
        if spare.len() > MAX_SPARE {
            spare.sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
            spare.truncate(MAX_SPARE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_reused_without_a_new_allocation() {
        let pool = BufferPool::default();
        let big = pool.take(1000);
        let small = pool.take(10);
        let (big_ptr, small_ptr) = (big.as_ptr(), small.as_ptr());
        pool.give([big, small]);
        // The best fit: 10 elements come from the small buffer, 500 from the big one.
        let a = pool.take(10);
        let b = pool.take(500);
        assert_eq!((a.as_ptr(), b.as_ptr()), (small_ptr, big_ptr));
        assert_eq!((a.len(), b.len()), (10, 500));
        // Nothing spare: a new one, of the length asked for.
        assert_eq!(pool.take(7).len(), 7);
    }

    #[test]
    fn the_pool_keeps_at_most_max_spare_buffers_the_largest() {
        let pool = BufferPool::default();
        pool.give((1..=MAX_SPARE + 5).map(|n| vec![0f32; n]));
        let spare = pool.spare.lock().unwrap();
        assert_eq!(spare.len(), MAX_SPARE);
        assert!(spare.iter().all(|b| b.capacity() > 5));
    }
}
