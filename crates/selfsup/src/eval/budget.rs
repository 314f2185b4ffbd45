//! Label budgets: how many labelled training images the evaluation may use.
//!
//! Semi-supervised benchmarks report accuracy as a function of the number of
//! labels, either as a count per class ("shots": `1/class`, `5/class`) or as a
//! fraction of the training set (`10%`, as in SimCLR's 1% / 10% ImageNet
//! tables). The labelled subset is drawn with a seed so that every row of a
//! results table uses the same subsets.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Context};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// How many labels the evaluation may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelBudget {
    /// Exactly this many labelled images of every class (`5/class`).
    PerClass(usize),
    /// This fraction of the training set, stratified by class, in (0, 1] (`10%`, `0.1`).
    Fraction(f64),
}

const BUDGET_HELP: &str =
    "expected a count per class like `5/class` or a fraction like `10%` or `0.1`";

impl FromStr for LabelBudget {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let t = s.trim();
        if let Some(k) = t.strip_suffix("/class") {
            let k: usize = k
                .trim()
                .parse()
                .with_context(|| format!("label budget `{s}`: {BUDGET_HELP}"))?;
            if k == 0 {
                bail!("label budget `{s}`: needs at least 1 label per class");
            }
            return Ok(LabelBudget::PerClass(k));
        }
        let fraction = if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .with_context(|| format!("label budget `{s}`: {BUDGET_HELP}"))?;
            p / 100.0
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            // A bare integer is ambiguous: "5" could mean 5/class or 5%.
            bail!("label budget `{s}` is ambiguous: write `{t}/class` or `{t}%`");
        } else {
            t.parse::<f64>()
                .with_context(|| format!("label budget `{s}`: {BUDGET_HELP}"))?
        };
        check_fraction(fraction).with_context(|| format!("label budget `{s}`"))?;
        Ok(LabelBudget::Fraction(fraction))
    }
}

impl fmt::Display for LabelBudget {
    /// `5/class` or a percentage such as `10%` (a budget parsed from `0.1` prints as `10%`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelBudget::PerClass(k) => write!(f, "{k}/class"),
            LabelBudget::Fraction(p) => {
                // Round away the binary noise of p * 100 (0.07 * 100 = 7.000000000000001).
                let pct = format!("{:.9}", p * 100.0);
                let pct = pct.trim_end_matches('0').trim_end_matches('.');
                write!(f, "{pct}%")
            }
        }
    }
}

fn check_fraction(p: f64) -> anyhow::Result<()> {
    if !(p.is_finite() && p > 0.0 && p <= 1.0) {
        bail!("the fraction of labels must be in (0, 100%], got {}", p);
    }
    Ok(())
}

/// Indices (sorted) of a labelled subset of the training set, drawn with `seed`.
///
/// `PerClass(k)` takes exactly `k` images of every class and fails, naming the class,
/// if one has fewer. `Fraction(p)` takes `round(p · n_c)` images of every class `c`
/// (at least 1 for every class present); `Fraction(1.0)` is the whole training set.
pub fn draw_labeled(
    labels: &[u32],
    num_classes: usize,
    budget: &LabelBudget,
    seed: u64,
) -> anyhow::Result<Vec<usize>> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &y) in labels.iter().enumerate() {
        let class = by_class.get_mut(y as usize).with_context(|| {
            format!("training label {y} at index {i} is out of range for {num_classes} classes")
        })?;
        class.push(i);
    }
    if let LabelBudget::PerClass(k) = *budget {
        if k == 0 {
            bail!("label budget 0/class: needs at least 1 label per class");
        }
        if let Some((c, members)) = by_class.iter().enumerate().find(|(_, m)| m.len() < k) {
            bail!(
                "label budget {budget} is larger than the data: class {c} has {} training images",
                members.len()
            );
        }
    }
    if let LabelBudget::Fraction(p) = *budget {
        check_fraction(p).context("label budget")?;
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = Vec::new();
    for members in by_class.iter().filter(|m| !m.is_empty()) {
        let take = match *budget {
            LabelBudget::PerClass(k) => k,
            LabelBudget::Fraction(p) => {
                ((p * members.len() as f64).round() as usize).clamp(1, members.len())
            }
        };
        if take == members.len() {
            chosen.extend_from_slice(members);
        } else {
            chosen.extend(
                sample(&mut rng, members.len(), take)
                    .iter()
                    .map(|j| members[j]),
            );
        }
    }
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips() {
        for s in [
            "1/class", "5/class", "10/class", "10%", "100%", "1%", "0.5%", "7%",
        ] {
            let b: LabelBudget = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
            assert_eq!(b.to_string().parse::<LabelBudget>().unwrap(), b);
        }
        assert_eq!("0.1".parse::<LabelBudget>().unwrap().to_string(), "10%");
    }
}
