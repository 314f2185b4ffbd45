//! Scoring one answer.
//!
//! - Log-likelihood of each choice (lm-evaluation-harness's `multiple_choice`): `acc` is 1 when
//!   the choice with the largest `Σ_j log p(c_j | …)` is the target; `acc_norm` divides each
//!   log-likelihood by the choice's length in characters first, so long choices are not
//!   penalised for having more tokens.
//! - Generation: `exact_match` after [`normalize_answer`] (SQuAD's normalization, Rajpurkar et
//!   al. 2016), and [`chrf`] (Popović 2015, "chrF: character n-gram F-score for automatic MT
//!   evaluation") for translation.

use std::collections::HashMap;

/// The outcome of scoring the choices of one query by log-likelihood.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceOutcome {
    /// Index of the most likely choice.
    pub pred: usize,
    /// Index of the most likely choice per character.
    pub pred_norm: usize,
    pub acc: f64,
    pub acc_norm: f64,
}

/// Scores choices whose summed log-likelihoods are `loglik`; ties go to the earlier choice.
pub fn score_choices(loglik: &[f64], choices: &[String], target: usize) -> ChoiceOutcome {
    assert_eq!(loglik.len(), choices.len(), "one log-likelihood per choice");
    let per_char: Vec<f64> = loglik
        .iter()
        .zip(choices)
        .map(|(l, c)| l / c.chars().count().max(1) as f64)
        .collect();
    let pred = argmax(loglik);
    let pred_norm = argmax(&per_char);
    ChoiceOutcome {
        pred,
        pred_norm,
        acc: f64::from(u8::from(pred == target)),
        acc_norm: f64::from(u8::from(pred_norm == target)),
    }
}

fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Lowercase, punctuation and symbols removed, the English articles a/an/the removed,
/// whitespace collapsed to single spaces and trimmed (SQuAD's `normalize_answer`; letters
/// with accents and digits of any script are kept).
pub fn normalize_answer(s: &str) -> String {
    let cleaned: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1 when `prediction` and `target` are equal after [`normalize_answer`], else 0.
pub fn exact_match(prediction: &str, target: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(target),
    ))
}

/// chrF with character n-grams up to 6 and β = 2, in [0, 1]; see [`chrf_with`].
pub fn chrf(hypothesis: &str, reference: &str) -> f64 {
    chrf_with(hypothesis, reference, 6, 2.0)
}

/// Character n-gram F-score (Popović 2015), computed as sacreBLEU does for one sentence:
/// whitespace is removed; for each n ≤ `order` where both strings have n-grams, precision
/// `P_n = |H_n ∩ R_n| / |H_n|` and recall `R_n = |H_n ∩ R_n| / |R_n|` over n-gram multisets;
/// `P` and `R` are their means over those n, and `chrF = (1 + β²) P R / (β² P + R)` (0 when no
/// order has n-grams in both or nothing matches). β = 2 weighs recall twice as much.
pub fn chrf_with(hypothesis: &str, reference: &str, order: usize, beta: f64) -> f64 {
    let hyp: Vec<char> = hypothesis.chars().filter(|c| !c.is_whitespace()).collect();
    let reference: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
    let (mut p, mut r, mut orders) = (0.0, 0.0, 0);
    for n in 1..=order {
        let h = ngrams(&hyp, n);
        let g = ngrams(&reference, n);
        let (nh, ng): (usize, usize) = (h.values().sum(), g.values().sum());
        if nh == 0 || ng == 0 {
            continue;
        }
        let common: usize = h
            .iter()
            .map(|(k, &c)| c.min(g.get(k).copied().unwrap_or(0)))
            .sum();
        p += common as f64 / nh as f64;
        r += common as f64 / ng as f64;
        orders += 1;
    }
    if orders == 0 {
        return 0.0;
    }
    let (p, r) = (p / orders as f64, r / orders as f64);
    if p + r == 0.0 {
        return 0.0;
    }
    let b2 = beta * beta;
    (1.0 + b2) * p * r / (b2 * p + r)
}

fn ngrams(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut m = HashMap::new();
    if chars.len() >= n {
        for w in chars.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}
