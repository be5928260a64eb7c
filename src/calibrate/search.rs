//! Derivative-free minimisers over a box, counting evaluations exactly: every evaluation is a
//! merge and a forward pass (seconds), so the budget is in evaluations, not iterations.
//!
//! Both work on the unit cube `[0, 1]^n`; the caller maps it onto the recipe's ranges. Neither
//! draws a random number: the same objective gives the same sequence of points.
//! - [`golden_section`] for one value: the bracket shrinks by the golden ratio per evaluation,
//!   reusing one interior point each step (Kiefer 1953).
//! - [`nelder_mead`] for several: the simplex method with the standard coefficients
//!   (reflection 1, expansion 2, contraction 1/2, shrink 1/2), every point projected into the
//!   cube (clamped), as bounded Nelder–Mead variants do.

/// The golden ratio's conjugate, (√5 − 1) / 2.
const INV_PHI: f64 = 0.618_033_988_749_894_9;

/// The best point an objective reached and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Best {
    pub x: Vec<f64>,
    pub value: f64,
}

/// The objective: `Ok(value)` to minimise, `Ok(None)` when the budget is spent (the search
/// stops), `Err` to abort the search.
pub type Step<E> = std::result::Result<Option<f64>, E>;

/// Minimise `f` over `[0, 1]` by golden-section search until `f` reports its budget spent or
/// the bracket is narrower than `tolerance`. Assumes `f` unimodal; on any other function it
/// still returns the best point it evaluated.
pub fn golden_section<E>(
    mut f: impl FnMut(f64) -> Step<E>,
    tolerance: f64,
) -> std::result::Result<Option<Best>, E> {
    let mut best: Option<Best> = None;
    let mut eval = |x: f64, best: &mut Option<Best>| -> Step<E> {
        let v = f(x)?;
        if let Some(v) = v {
            if best.as_ref().is_none_or(|b| v < b.value) {
                *best = Some(Best {
                    x: vec![x],
                    value: v,
                });
            }
        }
        Ok(v)
    };
    let (mut a, mut b) = (0.0f64, 1.0f64);
    let mut c = b - INV_PHI * (b - a);
    let mut d = a + INV_PHI * (b - a);
    let Some(mut fc) = eval(c, &mut best)? else {
        return Ok(best);
    };
    let Some(mut fd) = eval(d, &mut best)? else {
        return Ok(best);
    };
    while b - a > tolerance {
        // Keep the side holding the lower interior point; ties keep the lower side, so the
        // sequence is fixed.
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - INV_PHI * (b - a);
            match eval(c, &mut best)? {
                Some(v) => fc = v,
                None => break,
            }
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + INV_PHI * (b - a);
            match eval(d, &mut best)? {
                Some(v) => fd = v,
                None => break,
            }
        }
    }
    Ok(best)
}

/// Minimise `f` over `[0, 1]^n` by Nelder–Mead from `start`, with an initial simplex of
/// `start` and one vertex moved by `step` along each axis (towards the cube's inside).
/// A run ends when every vertex is within `tolerance` of the best; clamping can flatten a
/// simplex against a face of the cube, so the search restarts from the best point with a fresh
/// simplex until a restart finds nothing better. Stops early when `f` reports its budget spent.
pub fn nelder_mead<E>(
    mut f: impl FnMut(&[f64]) -> Step<E>,
    start: &[f64],
    step: f64,
    tolerance: f64,
) -> std::result::Result<Option<Best>, E> {
    let mut best: Option<Best> = None;
    let mut from = start.to_vec();
    loop {
        let (run, spent) = simplex_run(&mut f, &from, step, tolerance)?;
        let Some(run) = run else { break };
        let improved = best.as_ref().is_none_or(|b| run.value < b.value);
        if improved {
            from = run.x.clone();
            best = Some(run);
        }
        if spent || !improved {
            break;
        }
    }
    Ok(best)
}

/// One Nelder–Mead run: its best point, and whether the budget ran out.
fn simplex_run<E>(
    f: &mut impl FnMut(&[f64]) -> Step<E>,
    start: &[f64],
    step: f64,
    tolerance: f64,
) -> std::result::Result<(Option<Best>, bool), E> {
    let n = start.len();
    let clamp = |x: Vec<f64>| x.into_iter().map(|v| v.clamp(0.0, 1.0)).collect::<Vec<_>>();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    let mut points = vec![clamp(start.to_vec())];
    for i in 0..n {
        let mut p = points[0].clone();
        p[i] += if p[i] + step <= 1.0 { step } else { -step };
        points.push(clamp(p));
    }
    for p in points {
        match f(&p)? {
            Some(v) => simplex.push((p, v)),
            None => return Ok((best_of(&simplex), true)),
        }
    }
    let order = |s: &mut Vec<(Vec<f64>, f64)>| {
        // Stable: equal values keep their order, so ties resolve the same way every run.
        s.sort_by(|a, b| a.1.total_cmp(&b.1));
    };
    loop {
        order(&mut simplex);
        let spread = simplex[1..]
            .iter()
            .map(|(p, _)| distance(p, &simplex[0].0))
            .fold(0.0f64, f64::max);
        if spread < tolerance {
            return Ok((best_of(&simplex), false));
        }
        let worst = simplex[n].clone();
        let centroid: Vec<f64> = (0..n)
            .map(|i| simplex[..n].iter().map(|(p, _)| p[i]).sum::<f64>() / n as f64)
            .collect();
        // centroid + t * (centroid - worst), projected into the cube.
        let along = |t: f64| {
            clamp(
                centroid
                    .iter()
                    .zip(&worst.0)
                    .map(|(c, w)| c + t * (c - w))
                    .collect(),
            )
        };
        let reflected = along(1.0);
        let Some(fr) = f(&reflected)? else {
            return Ok((best_of(&simplex), true));
        };
        if fr < simplex[0].1 {
            let expanded = along(2.0);
            let Some(fe) = f(&expanded)? else {
                simplex[n] = (reflected, fr);
                return Ok((best_of(&simplex), true));
            };
            simplex[n] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
            continue;
        }
        if fr < simplex[n - 1].1 {
            simplex[n] = (reflected, fr);
            continue;
        }
        // Contract: outside when the reflection beat the worst, inside otherwise.
        let (contracted, limit) = if fr < worst.1 {
            (along(0.5), fr)
        } else {
            (along(-0.5), worst.1)
        };
        let Some(fc) = f(&contracted)? else {
            return Ok((best_of(&simplex), true));
        };
        if fc < limit {
            simplex[n] = (contracted, fc);
            continue;
        }
        // Shrink every vertex halfway towards the best.
        let best = &simplex[0].0;
        let shrunk: Vec<Vec<f64>> = simplex[1..]
            .iter()
            .map(|(x, _)| best.iter().zip(x).map(|(b, x)| b + 0.5 * (x - b)).collect())
            .collect();
        for (k, p) in shrunk.into_iter().enumerate() {
            let Some(v) = f(&p)? else {
                return Ok((best_of(&simplex), true));
            };
            simplex[k + 1] = (p, v);
        }
    }
}

fn best_of(simplex: &[(Vec<f64>, f64)]) -> Option<Best> {
    simplex
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(x, v)| Best {
            x: x.clone(),
            value: *v,
        })
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::convert::Infallible;

    /// Runs of an objective: every point evaluated, in order, and a budget.
    struct Log {
        points: RefCell<Vec<Vec<f64>>>,
        budget: usize,
    }

    impl Log {
        fn new(budget: usize) -> Log {
            Log {
                points: RefCell::new(Vec::new()),
                budget,
            }
        }

        fn eval(&self, x: &[f64], g: impl Fn(&[f64]) -> f64) -> Step<Infallible> {
            let mut points = self.points.borrow_mut();
            if points.len() >= self.budget {
                return Ok(None);
            }
            points.push(x.to_vec());
            Ok(Some(g(x)))
        }

        fn count(&self) -> usize {
            self.points.borrow().len()
        }
    }

    fn parabola(x: &[f64]) -> f64 {
        (x[0] - 0.3137).powi(2) + 2.0
    }

    #[test]
    fn golden_section_finds_the_minimum_of_a_parabola() {
        let log = Log::new(1000);
        let best = golden_section(|x| log.eval(&[x], parabola), 1e-6)
            .unwrap()
            .unwrap();
        assert!((best.x[0] - 0.3137).abs() < 1e-6, "{best:?}");
        assert!((best.value - 2.0).abs() < 1e-11);
        // Two points, then one per step while the bracket (0.618^k) is wider than 1e-6.
        let steps = (1e-6f64.ln() / INV_PHI.ln()).ceil() as usize;
        assert_eq!(log.count(), steps + 2);
    }

    #[test]
    fn golden_section_reaches_a_minimum_on_the_boundary() {
        let log = Log::new(1000);
        let best = golden_section(|x| log.eval(&[x], |x| (x[0] + 0.5).abs()), 1e-5)
            .unwrap()
            .unwrap();
        assert!(best.x[0] < 1e-5, "{best:?}");
    }

    #[test]
    fn golden_section_stops_at_the_budget_with_the_best_point_evaluated() {
        let log = Log::new(7);
        let best = golden_section(|x| log.eval(&[x], parabola), 1e-9)
            .unwrap()
            .unwrap();
        assert_eq!(log.count(), 7);
        let min = log
            .points
            .borrow()
            .iter()
            .map(|p| parabola(p))
            .fold(f64::INFINITY, f64::min);
        assert_eq!(best.value, min);
    }

    /// Rosenbrock's valley on [-2, 2]^2 mapped onto the unit cube: minimum 0 at u = (0.75, 0.75).
    fn rosenbrock(u: &[f64]) -> f64 {
        let (x, y) = (4.0 * u[0] - 2.0, 4.0 * u[1] - 2.0);
        (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
    }

    #[test]
    fn nelder_mead_follows_rosenbrocks_valley() {
        let log = Log::new(2000);
        let best = nelder_mead(|x| log.eval(x, rosenbrock), &[0.5, 0.5], 0.25, 1e-7)
            .unwrap()
            .unwrap();
        assert!(best.value < 1e-8, "{best:?} after {}", log.count());
        assert!((best.x[0] - 0.75).abs() < 1e-4 && (best.x[1] - 0.75).abs() < 1e-4);
        assert!(log.count() < 2000, "converged before the budget");
    }

    #[test]
    fn nelder_mead_stays_in_the_cube_and_finds_a_minimum_on_its_face() {
        let log = Log::new(500);
        let g = |u: &[f64]| (u[0] + 0.5).powi(2) + (u[1] - 0.2).powi(2) + (u[2] - 0.9).powi(2);
        let best = nelder_mead(|x| log.eval(x, g), &[0.5, 0.5, 0.5], 0.25, 1e-6)
            .unwrap()
            .unwrap();
        assert!(log
            .points
            .borrow()
            .iter()
            .flatten()
            .all(|v| (0.0..=1.0).contains(v)));
        assert!(best.x[0] < 1e-4, "{best:?}");
        assert!(
            (best.x[1] - 0.2).abs() < 1e-3 && (best.x[2] - 0.9).abs() < 1e-3,
            "{best:?} {}",
            log.count()
        );
    }

    #[test]
    fn nelder_mead_spends_exactly_its_budget_and_repeats_itself() {
        let run = || {
            let log = Log::new(25);
            let best = nelder_mead(|x| log.eval(x, rosenbrock), &[0.5, 0.5], 0.25, 0.0)
                .unwrap()
                .unwrap();
            let points = log.points.borrow().clone();
            (best, points)
        };
        let (a, pa) = run();
        let (b, pb) = run();
        assert_eq!(pa.len(), 25);
        assert_eq!(pa, pb);
        assert_eq!(a, b);
        let min = pa
            .iter()
            .map(|p| rosenbrock(p))
            .fold(f64::INFINITY, f64::min);
        assert_eq!(a.value, min);
    }
}
