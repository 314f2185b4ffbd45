//! Weighted kNN: cosine similarity, exp(s/T) votes, k clipped, deterministic ties.

use selfsup::eval::{knn_predict, DEFAULT_K, DEFAULT_TEMPERATURE};

fn knn(train: &[f32], y: &[u32], test: &[f32], d: usize, c: usize, k: usize, t: f64) -> Vec<u32> {
    knn_predict(train, y, y.len(), test, test.len() / d, d, c, k, t).unwrap()
}

#[test]
fn points_near_class_centroids_get_their_class() {
    // Class c lives around the unit vector e_c in 4 dimensions; 5 noisy copies each.
    let (d, c) = (4, 4);
    let jitter = |i: usize, j: usize| ((i * 31 + j * 17) % 7) as f32 * 0.02;
    let mut train = Vec::new();
    let mut y = Vec::new();
    for class in 0..c {
        for i in 0..5 {
            train.extend((0..d).map(|j| f32::from(j == class) + jitter(i + 5 * class, j)));
            y.push(class as u32);
        }
    }
    // Test points: scaled centroids (cosine ignores the norm) with other noise.
    let test: Vec<f32> = (0..c)
        .flat_map(|class| (0..d).map(move |j| 3.0 * f32::from(j == class) + jitter(j, class + 9)))
        .collect();
    let pred = knn(&train, &y, &test, d, c, DEFAULT_K, DEFAULT_TEMPERATURE);
    assert_eq!(pred, vec![0, 1, 2, 3]);
}

/// One neighbour of class 0 at similarity 1.0, two of class 1 at ≈ 0.9.
fn one_close_two_far() -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let angle = 0.9f32.acos();
    let train = vec![
        1.0,
        0.0,
        angle.cos(),
        angle.sin(),
        angle.cos(),
        -angle.sin(),
    ];
    (train, vec![0, 1, 1], vec![1.0, 0.0])
}

#[test]
fn low_temperature_trusts_the_nearest_neighbour() {
    // exp(1/T) vs 2·exp(0.9/T): class 0 wins iff exp(0.1/T) > 2, i.e. T < 0.144.
    let (train, y, test) = one_close_two_far();
    assert_eq!(knn(&train, &y, &test, 2, 2, 3, 0.07), vec![0]);
    assert_eq!(knn(&train, &y, &test, 2, 2, 3, 1.0), vec![1]);
    // With k = 1 only the nearest votes, whatever the temperature.
    assert_eq!(knn(&train, &y, &test, 2, 2, 1, 1.0), vec![0]);
}

#[test]
fn k_larger_than_the_labelled_set_is_clipped() {
    let (train, y, test) = one_close_two_far();
    for t in [0.07, 1.0] {
        assert_eq!(
            knn(&train, &y, &test, 2, 2, 1000, t),
            knn(&train, &y, &test, 2, 2, 3, t)
        );
    }
}

#[test]
fn ties_are_deterministic() {
    // Two identical training vectors: k = 1 keeps the lower train index.
    let train = [1.0, 1.0, 1.0, 1.0];
    assert_eq!(knn(&train, &[1, 0], &[1.0, 1.0], 2, 2, 1, 0.07), vec![1]);
    // Equal votes for two classes: the lower class wins.
    assert_eq!(knn(&train, &[1, 0], &[1.0, 1.0], 2, 2, 2, 0.07), vec![0]);
    // Symmetric neighbours at equal similarity, classes 2 and 1: class 1.
    let train = [1.0, 0.0, 0.0, 1.0];
    assert_eq!(knn(&train, &[2, 1], &[1.0, 1.0], 2, 3, 2, 0.5), vec![1]);
}

#[test]
fn zero_vectors_and_scale_do_not_break_it() {
    let train = [2.0, 0.0, 0.0, 0.5, 0.0, 0.0];
    let y = [0, 1, 2];
    // A zero test row has similarity 0 to all: the votes tie, class 0 wins.
    assert_eq!(knn(&train, &y, &[0.0, 0.0], 2, 3, 3, 0.07), vec![0]);
    // Norms do not matter, only directions.
    assert_eq!(knn(&train, &y, &[0.01, 100.0], 2, 3, 1, 0.07), vec![1]);
}

#[test]
fn many_rows_cross_block_boundaries() {
    // More rows than one test block and one train block, and d not a multiple of 8:
    // every test row is a copy of a train row, so 1-NN must find its class.
    let (n, d, c) = (301, 13, 7);
    let row = |i: usize| -> Vec<f32> {
        (0..d)
            .map(|j| (((i * 7919 + j * 104_729) % 1009) as f32 / 1009.0) - 0.5)
            .collect()
    };
    let train: Vec<f32> = (0..n).flat_map(row).collect();
    let y: Vec<u32> = (0..n).map(|i| (i % c) as u32).collect();
    let order: Vec<usize> = (0..n).rev().collect();
    let test: Vec<f32> = order.iter().flat_map(|&i| row(i)).collect();
    let pred = knn(&train, &y, &test, d, c, 1, 0.07);
    let want: Vec<u32> = order.iter().map(|&i| y[i]).collect();
    assert_eq!(pred, want);
}

#[test]
fn rejects_bad_input() {
    let err = |r: anyhow::Result<Vec<u32>>| format!("{:#}", r.unwrap_err());
    let x = [1.0, 0.0, 0.0, 1.0];
    assert!(err(knn_predict(&x, &[0, 1], 2, &x, 2, 2, 2, 0, 0.07)).contains("k must be"));
    assert!(err(knn_predict(&x, &[0, 1], 2, &x, 2, 2, 2, 5, 0.0)).contains("temperature"));
    assert!(err(knn_predict(&x, &[0, 2], 2, &x, 2, 2, 2, 5, 0.07)).contains("label 2"));
    assert!(err(knn_predict(&x, &[0, 1], 2, &x[..3], 2, 2, 2, 5, 0.07)).contains("test"));
    assert!(err(knn_predict(&[], &[], 0, &x, 2, 2, 2, 5, 0.07)).contains("no labelled data"));
    assert!(knn_predict(&x, &[0, 1], 2, &[], 0, 2, 2, 5, 0.07)
        .unwrap()
        .is_empty());
}
