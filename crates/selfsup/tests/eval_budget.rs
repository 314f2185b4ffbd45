//! Label budgets: parsing, exact per-class counts, stratified fractions, seeds, errors.

use selfsup::eval::{draw_labeled, LabelBudget};

/// Classes 0..5 of sizes 100, 50, 7, 41, 3, interleaved.
fn labels() -> Vec<u32> {
    let mut y = Vec::new();
    for (class, size) in [100, 50, 7, 41, 3].into_iter().enumerate() {
        y.extend(std::iter::repeat_n(class as u32, size));
    }
    // A fixed interleaving, so classes are not contiguous.
    let n = y.len();
    (0..n).map(|i| y[(i * 37) % n]).collect()
}

fn counts(y: &[u32], idx: &[usize]) -> Vec<usize> {
    let mut c = vec![0; 5];
    for &i in idx {
        c[y[i] as usize] += 1;
    }
    c
}

#[test]
fn parses_budgets() {
    let ok = |s: &str| s.parse::<LabelBudget>().unwrap();
    assert_eq!(ok("5/class"), LabelBudget::PerClass(5));
    assert_eq!(ok("1/class"), LabelBudget::PerClass(1));
    assert_eq!(ok(" 10/class "), LabelBudget::PerClass(10));
    assert_eq!(ok("10%"), LabelBudget::Fraction(0.1));
    assert_eq!(ok("100%"), LabelBudget::Fraction(1.0));
    assert_eq!(ok("0.1"), LabelBudget::Fraction(0.1));
    assert_eq!(ok("1.0"), LabelBudget::Fraction(1.0));
    assert_eq!(ok("0.5%"), LabelBudget::Fraction(0.005));
    for s in ["5/class", "1/class", "10%", "100%", "1%"] {
        assert_eq!(ok(s).to_string(), s);
    }
    assert_eq!(ok("0.25").to_string(), "25%");
}

#[test]
fn rejects_bad_budgets() {
    let err = |s: &str| format!("{:#}", s.parse::<LabelBudget>().unwrap_err());
    assert!(err("5").contains("write `5/class` or `5%`"), "{}", err("5"));
    for s in ["", "abc", "x/class", "-1/class", "5/klass", "1.5/class"] {
        assert!(
            err(s).contains("expected a count per class"),
            "{s}: {}",
            err(s)
        );
    }
    assert!(err("0/class").contains("at least 1"));
    for s in ["0%", "150%", "1.5", "-0.1", "nan", "inf"] {
        assert!(err(s).contains("must be in (0, 100%]"), "{s}: {}", err(s));
    }
}

#[test]
fn per_class_draws_exactly_k_of_every_class() {
    let y = labels();
    for k in [1, 3] {
        let idx = draw_labeled(&y, 5, &LabelBudget::PerClass(k), 0).unwrap();
        assert_eq!(counts(&y, &idx), vec![k; 5]);
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    }
}

#[test]
fn per_class_larger_than_the_data_names_the_class() {
    let y = labels();
    let e = draw_labeled(&y, 5, &LabelBudget::PerClass(4), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "label budget 4/class is larger than the data: class 4 has 3 training images"
    );
    let e = draw_labeled(&y[..], 5, &LabelBudget::PerClass(50), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "label budget 50/class is larger than the data: class 2 has 7 training images"
    );
    // A class with no images at all.
    let e = draw_labeled(&y, 6, &LabelBudget::PerClass(1), 0).unwrap_err();
    assert!(e.to_string().contains("class 5 has 0 training images"));
}

#[test]
fn fractions_are_stratified_with_at_least_one_per_class() {
    let y = labels();
    let idx = draw_labeled(&y, 5, &LabelBudget::Fraction(0.1), 0).unwrap();
    // round(0.1 · [100, 50, 7, 41, 3]) = [10, 5, 1, 4, 0 → 1].
    assert_eq!(counts(&y, &idx), vec![10, 5, 1, 4, 1]);
    let all = draw_labeled(&y, 5, &"100%".parse().unwrap(), 3).unwrap();
    assert_eq!(all, (0..y.len()).collect::<Vec<_>>());
}

#[test]
fn draws_are_determined_by_the_seed() {
    let y = labels();
    for budget in [LabelBudget::PerClass(2), LabelBudget::Fraction(0.2)] {
        let a = draw_labeled(&y, 5, &budget, 42).unwrap();
        assert_eq!(a, draw_labeled(&y, 5, &budget, 42).unwrap());
        assert_ne!(a, draw_labeled(&y, 5, &budget, 43).unwrap());
    }
}

#[test]
fn rejects_out_of_range_labels() {
    let e = draw_labeled(&[0, 1, 7], 3, &LabelBudget::PerClass(1), 0).unwrap_err();
    assert!(e.to_string().contains("label 7 at index 2"), "{e}");
    let e = draw_labeled(&[0, 1], 2, &LabelBudget::Fraction(0.0), 0).unwrap_err();
    assert!(format!("{e:#}").contains("(0, 100%]"), "{e:#}");
}
