//! The request mix: which operations the tasks issue, on which namespace and key.

use rand::rngs::SmallRng;
use rand::RngExt;
use rand_distr::{Distribution, Zipf};

use crate::args::Args;
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    Pages,
    Users,
}

#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub read: bool,
    pub ns: Ns,
    pub key: u64,
    /// The revision a write stores.
    pub revision: u64,
}

/// Draws operations: reads at `--read-ratio`, one in four on `users`, keys by zipf popularity.
#[derive(Clone, Copy)]
pub struct Mix {
    zipf: Zipf<f64>,
    read_ratio: f64,
}

impl Mix {
    pub fn new(args: &Args) -> Result<Mix> {
        let zipf = Zipf::new(args.keys as f64, args.skew)
            .map_err(|e| format!("--keys {} --skew {}: {e}", args.keys, args.skew))?;
        Ok(Mix {
            zipf,
            read_ratio: args.read_ratio,
        })
    }

    /// The next operation. The draws keep one order, so a seed gives each task the same operations.
    pub fn draw(&self, rng: &mut SmallRng) -> Op {
        Op {
            read: rng.random::<f64>() < self.read_ratio,
            ns: if rng.random_range(0..4) == 0 {
                Ns::Users
            } else {
                Ns::Pages
            },
            key: self.zipf.sample(rng) as u64,
            revision: rng.random(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rand::SeedableRng;

    use super::*;

    fn draws(mix: &Mix, seed: u64) -> Vec<String> {
        let mut rng = SmallRng::seed_from_u64(seed);
        (0..100)
            .map(|_| format!("{:?}", mix.draw(&mut rng)))
            .collect()
    }

    #[test]
    fn a_seed_gives_the_same_operations() {
        let args = Args::parse_from(["loadgen", "--keys", "50"]);
        let mix = Mix::new(&args).unwrap();
        assert_eq!(draws(&mix, 7), draws(&mix, 7));
        assert_ne!(draws(&mix, 7), draws(&mix, 8));
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            assert!((1..=50).contains(&mix.draw(&mut rng).key));
        }
    }
}
