//! `nearswap`: keep the base except where base and secondary are within `t`:
//! w = clamp(t / |v0 − v1|, 0, 1) (|v0 − v1| floored at 1e-6, so equal values swap fully),
//! result = lerp(v0, v1, w). Several secondaries chain in order.

use super::*;

pub struct NearSwap;

impl Method for NearSwap {
    fn name(&self) -> &'static str {
        "nearswap"
    }
    fn params(&self) -> &'static [ParamSpec] {
        const P: &[ParamSpec] = &[param("t", Scope::Shared, None)];
        P
    }
    fn base(&self) -> Base {
        Base::Required
    }
    fn inputs(&self) -> (usize, usize) {
        (2, usize::MAX)
    }
    fn prepare(&self, input: &MergeInput) -> Result<Box<dyn Apply>> {
        Ok(Box::new(Swap {
            base: input.base.expect("nearswap has a base"),
            t: (input.shared)("t") as f32,
            n: input.n_elements(),
            rounds: input.n_inputs - 1,
            moved: 0.0,
            full: 0,
        }))
    }
}

/// NearSwap over row chunks; it counts what it swapped for the summary.
struct Swap {
    base: usize,
    t: f32,
    n: usize,
    rounds: usize,
    /// Σ w over the elements done so far (in element order), and how many swapped fully.
    moved: f64,
    full: usize,
}

impl Apply for Swap {
    fn apply(&mut self, _first_row: usize, x: &[&[f32]], out: &mut [f32]) -> Result<()> {
        let t = self.t;
        out.copy_from_slice(x[self.base]);
        for other in x
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != self.base)
            .map(|p| p.1)
        {
            for (o, &v1) in out.iter_mut().zip(other.iter()) {
                let v0 = *o;
                let w = (t / (v0 - v1).abs().max(1e-6)).clamp(0.0, 1.0);
                let w = if w.is_nan() { 1.0 } else { w };
                self.moved += w as f64;
                self.full += (w >= 1.0) as usize;
                *o = w * v1 + (1.0 - w) * v0;
            }
        }
        Ok(())
    }

    fn note(&self) -> MergeNote {
        let n = (self.n * self.rounds.max(1)) as f64;
        MergeNote {
            text: Some(format!(
                "swapped {:.2}% fully, mean weight {:.4}",
                100.0 * self.full as f64 / n,
                self.moved / n
            )),
        }
    }
}
