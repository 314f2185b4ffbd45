//! The fused CPU kernels (issue 6) against the generic burn ops they replace. Attention: against the
//! composition of split/attention/merge, values and gradients, odd shapes, with and without autodiff,
//! and through a GPT block. Convolution: against burn's `Conv2d::forward`, values and gradients of
//! input, weight and bias, strides, paddings, kernels 1×1/3×3/5×3, partial image groups. Linear:
//! against burn's `Linear::forward` and `x · Eᵀ`, values and gradients of input, weight and bias.

use burn::prelude::*;
use burn::tensor::Distribution;
use selfsup::nn::fused::{causal_self_attention, causal_self_attention_reference};
use selfsup::nn::transformer::CausalSelfAttentionConfig;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}[{i}]: fused {x} vs reference {y} (max |ref| {scale})"
        );
    }
}

/// (batch, positions, heads, head width): odd sizes, one position, one head, GPT-bench-like.
const SHAPES: [(usize, usize, usize, usize); 5] = [
    (2, 7, 3, 5),
    (1, 1, 2, 4),
    (3, 33, 1, 8),
    (2, 16, 4, 16),
    (1, 130, 2, 3),
];

#[test]
fn fused_attention_matches_the_generic_ops_values_and_gradients() {
    let device = Device::flex().autodiff();
    for (seed, &(b, t, h, dh)) in SHAPES.iter().enumerate() {
        let d = h * dh;
        device.seed(100 + seed as u64);
        // Large enough logits that the softmax is far from uniform.
        let x = Tensor::<3>::random([b, t, 3 * d], Distribution::Normal(0.0, 2.0), &device);
        // A random cotangent so every output element's gradient path is checked.
        let w = Tensor::<3>::random([b, t, d], Distribution::Normal(0.0, 1.0), &device);

        let xf = x.clone().require_grad();
        let yf = causal_self_attention(xf.clone(), h);
        let gf = (yf.clone() * w.clone()).sum().backward();
        let xr = x.clone().require_grad();
        let yr = causal_self_attention_reference(xr.clone(), h);
        let gr = (yr.clone() * w.clone()).sum().backward();

        let what = format!("B {b} T {t} H {h} Dh {dh}");
        assert_eq!(yf.dims(), [b, t, d]);
        assert_close(&format!("{what} output"), &values(yf), &values(yr), 1e-5);
        let (dxf, dxr) = (xf.grad(&gf).unwrap(), xr.grad(&gr).unwrap());
        assert_close(&format!("{what} d input"), &values(dxf), &values(dxr), 1e-4);
    }
}

/// A context long enough (T = 2900, 2 · T² floats > 64 MiB) that the backward allocates its work
/// matrices per call instead of keeping them per thread: still the reference's values and
/// gradients. The softmax runs over up to 2900 keys, so rounding in the sums grows with them.
#[test]
fn fused_attention_matches_at_a_long_context() {
    let device = Device::flex().autodiff();
    let (b, t, h, dh) = (1, 2900, 1, 2);
    device.seed(11);
    let x = Tensor::<3>::random([b, t, 3 * h * dh], Distribution::Normal(0.0, 2.0), &device);
    let w = Tensor::<3>::random([b, t, h * dh], Distribution::Normal(0.0, 1.0), &device);
    let xf = x.clone().require_grad();
    let yf = causal_self_attention(xf.clone(), h);
    let gf = (yf.clone() * w.clone()).sum().backward();
    let xr = x.require_grad();
    let yr = causal_self_attention_reference(xr.clone(), h);
    let gr = (yr.clone() * w).sum().backward();
    assert_close("T 2900 output", &values(yf), &values(yr), 1e-5);
    let (dxf, dxr) = (xf.grad(&gf).unwrap(), xr.grad(&gr).unwrap());
    assert_close("T 2900 d input", &values(dxf), &values(dxr), 1e-4);
}

#[test]
fn fused_attention_is_causal() {
    // Changing a later position must not change an earlier output.
    let device = Device::flex();
    let (b, t, h, dh) = (1, 9, 2, 4);
    device.seed(7);
    let x = Tensor::<3>::random([b, t, 3 * h * dh], Distribution::Normal(0.0, 1.0), &device);
    let mut changed = values(x.clone());
    let last = (t - 1) * 3 * h * dh;
    changed[last..].iter_mut().for_each(|v| *v += 3.0);
    let x2 = Tensor::<3>::from_data(TensorData::new(changed, [b, t, 3 * h * dh]), &device);
    let x3 = x.clone();
    let (y1, y2) = (
        values(causal_self_attention(x, h)),
        values(causal_self_attention(x2, h)),
    );
    let row = h * dh;
    assert_eq!(y1[..(t - 1) * row], y2[..(t - 1) * row]);
    assert_ne!(y1[(t - 1) * row..], y2[(t - 1) * row..]);
    // Position 0 attends only to itself: its output is its own value vector.
    let first = values(x3.narrow(1, 0, 1).narrow(2, 2 * row, row));
    assert_close("position 0", &y1[..row], &first, 1e-6);
}

#[test]
fn plain_device_forward_matches_autodiff_forward() {
    let (b, t, h, dh) = (2, 11, 2, 6);
    let plain = Device::flex();
    plain.seed(3);
    let x = Tensor::<3>::random([b, t, 3 * h * dh], Distribution::Normal(0.0, 1.0), &plain);
    let data = x.to_data();
    let ad = Device::flex().autodiff();
    let y_plain = values(causal_self_attention(x, h));
    let y_ad = values(causal_self_attention(Tensor::<3>::from_data(data, &ad), h));
    assert_eq!(y_plain, y_ad);
}

#[test]
fn attention_module_fused_and_probability_paths_agree() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let attn = CausalSelfAttentionConfig::new(24, 4).init(&device);
    let x = Tensor::<3>::random([3, 10, 24], Distribution::Normal(0.0, 1.0), &device);
    let (fused, none) = attn.forward(x.clone(), None, false);
    let (generic, probs) = attn.forward(x, None, true);
    assert!(none.is_none());
    assert_eq!(probs.unwrap().dims(), [3, 4, 10, 10]);
    assert_close("module output", &values(fused), &values(generic), 1e-5);
}

/// (images, in channels, height, width, out channels, kernel [kh, kw], stride, padding, bias)
type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 2],
    bool,
);

const CONV_CASES: [ConvCase; 12] = [
    (3, 2, 7, 6, 5, [3, 3], [1, 1], [1, 1], false),
    (5, 3, 9, 9, 4, [3, 3], [2, 2], [1, 1], true),
    (2, 4, 5, 8, 3, [1, 1], [2, 2], [0, 0], false),
    (1, 1, 6, 5, 2, [5, 3], [1, 2], [2, 0], true),
    // 4 output positions per image: 16 images per GEMM, so 70 images = four full + one partial group
    (70, 3, 4, 4, 6, [3, 3], [2, 2], [1, 1], false),
    (2, 3, 4, 4, 2, [3, 3], [1, 1], [0, 0], false),
    (4, 16, 8, 8, 32, [3, 3], [2, 2], [1, 1], false),
    // stride-2 rows of 20 outputs: more than one 16-lane chunk in the vectorized im2col/col2im
    (2, 3, 9, 40, 4, [3, 3], [2, 2], [1, 1], true),
    // a 1×1 image under a 5×5 kernel with padding 2: kernel columns that see no pixel at all
    (3, 2, 1, 1, 3, [5, 5], [1, 1], [2, 2], true),
    // 3×3, stride 1, padding 1 with ≥ 16 channels both ways: Winograd F(2×2, 3×3) forward and
    // input gradient (odd and even sides, a 1×1 plane, several image groups)
    (3, 16, 7, 9, 20, [3, 3], [1, 1], [1, 1], true),
    (40, 24, 4, 4, 16, [3, 3], [1, 1], [1, 1], false),
    (2, 16, 1, 1, 17, [3, 3], [1, 1], [1, 1], false),
];

fn conv_layer(case: &ConvCase, device: &Device) -> burn::nn::conv::Conv2d {
    let &(_, cin, _, _, cout, kernel, stride, [ph, pw], bias) = case;
    burn::nn::conv::Conv2dConfig::new([cin, cout], kernel)
        .with_stride(stride)
        .with_padding(burn::nn::PaddingConfig2d::Explicit(ph, pw, ph, pw))
        .with_bias(bias)
        .init(device)
}

#[test]
fn fused_conv_matches_burn_conv_values_and_gradients() {
    use selfsup::nn::fused::conv2d;
    let device = Device::flex().autodiff();
    for (i, case) in CONV_CASES.iter().enumerate() {
        let &(n, cin, h, w, ..) = case;
        device.seed(200 + i as u64);
        let conv = conv_layer(case, &device);
        let x = Tensor::<4>::random([n, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
        let yr = conv.forward(x.clone().require_grad());
        let cot = Tensor::<4>::random(yr.dims(), Distribution::Normal(0.0, 1.0), &device);

        let xf = x.clone().require_grad();
        let yf = conv2d(&conv, xf.clone());
        let gf = (yf.clone() * cot.clone()).sum().backward();
        let xr = x.clone().require_grad();
        let yr = conv.forward(xr.clone());
        let gr = (yr.clone() * cot.clone()).sum().backward();

        let what = format!("case {i} {case:?}");
        assert_eq!(yf.dims(), yr.dims(), "{what}");
        assert_close(&format!("{what} output"), &values(yf), &values(yr), 1e-5);
        assert_close(
            &format!("{what} d input"),
            &values(xf.grad(&gf).unwrap()),
            &values(xr.grad(&gr).unwrap()),
            1e-5,
        );
        assert_close(
            &format!("{what} d weight"),
            &values(conv.weight.val().grad(&gf).unwrap()),
            &values(conv.weight.val().grad(&gr).unwrap()),
            1e-4,
        );
        if let Some(b) = &conv.bias {
            assert_close(
                &format!("{what} d bias"),
                &values(b.val().grad(&gf).unwrap()),
                &values(b.val().grad(&gr).unwrap()),
                1e-4,
            );
        }
    }
}

#[test]
fn fused_conv_weight_gradient_without_input_gradient() {
    // The first layer's input (the images) needs no gradient: only dW is computed.
    use selfsup::nn::fused::conv2d;
    let device = Device::flex().autodiff();
    device.seed(5);
    let case = CONV_CASES[1];
    let conv = conv_layer(&case, &device);
    let x = Tensor::<4>::random([5, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
    let gf = conv2d(&conv, x.clone()).square().sum().backward();
    let gr = conv.forward(x).square().sum().backward();
    assert_close(
        "d weight",
        &values(conv.weight.val().grad(&gf).unwrap()),
        &values(conv.weight.val().grad(&gr).unwrap()),
        1e-4,
    );
    // And on a plain (inference) device the forward agrees too.
    let plain = Device::flex();
    let conv_plain = conv_layer(&case, &plain);
    let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &plain);
    assert_close(
        "plain forward",
        &values(conv2d(&conv_plain, x.clone())),
        &values(conv_plain.forward(x)),
        1e-5,
    );
}

fn bn_case<const D: usize>(shape: [usize; D], relu: bool, seed: u64) {
    use selfsup::nn::fused::batch_norm_train_nd;
    let device = Device::flex().autodiff();
    device.seed(seed);
    let c = shape[1];
    let x = Tensor::<D>::random(shape, Distribution::Normal(0.5, 2.0), &device);
    let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device);
    let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
    let cot = Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let eps = 1e-5;

    let (xf, gf_, bf) = (
        x.clone().require_grad(),
        gamma.clone().require_grad(),
        beta.clone().require_grad(),
    );
    let (yf, mean_f, var_f) = batch_norm_train_nd(xf.clone(), gf_.clone(), bf.clone(), eps, relu)
        .expect("the fused kernel applies on the flex device");
    let grads_f = (yf.clone() * cot.clone()).sum().backward();

    let (xr, gr_, br) = (
        x.clone().require_grad(),
        gamma.clone().require_grad(),
        beta.clone().require_grad(),
    );
    let out = burn::tensor::module::batch_norm_train(xr.clone(), gr_.clone(), br.clone(), eps);
    let yr = if relu {
        burn::tensor::activation::relu(out.output)
    } else {
        out.output
    };
    let grads_r = (yr.clone() * cot).sum().backward();

    let what = format!("{shape:?} relu {relu}");
    assert_close(&format!("{what} output"), &values(yf), &values(yr), 1e-5);
    assert_close(
        &format!("{what} mean"),
        &values(mean_f),
        &values(out.mean),
        1e-5,
    );
    assert_close(
        &format!("{what} var"),
        &values(var_f),
        &values(out.variance),
        1e-5,
    );
    assert_close(
        &format!("{what} dx"),
        &values(xf.grad(&grads_f).unwrap()),
        &values(xr.grad(&grads_r).unwrap()),
        1e-4,
    );
    assert_close(
        &format!("{what} dgamma"),
        &values(gf_.grad(&grads_f).unwrap()),
        &values(gr_.grad(&grads_r).unwrap()),
        1e-4,
    );
    assert_close(
        &format!("{what} dbeta"),
        &values(bf.grad(&grads_f).unwrap()),
        &values(br.grad(&grads_r).unwrap()),
        1e-4,
    );
}

#[test]
fn fused_batch_norm_matches_burn_values_statistics_and_gradients() {
    bn_case([4, 3, 5, 7], true, 1);
    bn_case([4, 3, 5, 7], false, 2);
    bn_case([9, 17], true, 3);
    bn_case([2, 1, 1, 3], false, 4);
    bn_case([16, 8, 4, 4], true, 5);
}

#[test]
fn fused_layer_norm_matches_burn_values_and_gradients() {
    use selfsup::nn::fused::layer_norm;
    let device = Device::flex().autodiff();
    for (i, (rows, d)) in [(1, 1), (3, 5), (70, 33), (130, 256)]
        .into_iter()
        .enumerate()
    {
        device.seed(300 + i as u64);
        let x = Tensor::<3>::random([2, rows, d], Distribution::Normal(1.0, 3.0), &device);
        let w = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), &device);
        let b = Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), &device);
        let cot = Tensor::<3>::random([2, rows, d], Distribution::Normal(0.0, 1.0), &device);
        let (xf, wf, bf) = (
            x.clone().require_grad(),
            w.clone().require_grad(),
            b.clone().require_grad(),
        );
        let yf = layer_norm(xf.clone(), wf.clone(), bf.clone(), 1e-5).expect("flex device");
        let gf = (yf.clone() * cot.clone()).sum().backward();
        let (xr, wr, br) = (
            x.clone().require_grad(),
            w.clone().require_grad(),
            b.clone().require_grad(),
        );
        let yr = burn::tensor::module::layer_norm(xr.clone(), wr.clone(), Some(br.clone()), 1e-5);
        let gr = (yr.clone() * cot).sum().backward();
        let what = format!("rows {rows} d {d}");
        assert_close(&format!("{what} output"), &values(yf), &values(yr), 1e-5);
        assert_close(
            &format!("{what} dx"),
            &values(xf.grad(&gf).unwrap()),
            &values(xr.grad(&gr).unwrap()),
            1e-4,
        );
        assert_close(
            &format!("{what} dw"),
            &values(wf.grad(&gf).unwrap()),
            &values(wr.grad(&gr).unwrap()),
            1e-4,
        );
        assert_close(
            &format!("{what} db"),
            &values(bf.grad(&gf).unwrap()),
            &values(br.grad(&gr).unwrap()),
            1e-4,
        );
    }
}

#[test]
fn fused_gelu_matches_burn_values_and_gradients() {
    let device = Device::flex().autodiff();
    // A grid from -12 to 12 (the tails, 0, and everything the erf approximation's clamp touches)
    // plus random values, an odd count so a partial vector tail is exercised.
    let mut xs: Vec<f32> = (0..=2400).map(|i| -12.0 + i as f32 * 0.01).collect();
    device.seed(9);
    xs.extend(values(Tensor::<1>::random(
        [40_001],
        Distribution::Normal(0.0, 3.0),
        &device,
    )));
    let n = xs.len();
    let x = Tensor::<1>::from_data(TensorData::new(xs, [n]), &device);
    let cot = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
    let xf = x.clone().require_grad();
    let yf = selfsup::nn::fused::gelu(xf.clone()).expect("flex device");
    let gf = (yf.clone() * cot.clone()).sum().backward();
    let xr = x.require_grad();
    let yr = burn::tensor::activation::gelu(xr.clone());
    let gr = (yr.clone() * cot).sum().backward();
    // Element-wise: |fused − exact| ≤ 2e-6 + 1e-5·|exact| (the rational erf is within 4e-7).
    for (what, a, b) in [
        ("gelu", values(yf), values(yr)),
        (
            "d gelu",
            values(xf.grad(&gf).unwrap()),
            values(xr.grad(&gr).unwrap()),
        ),
    ] {
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            assert!(
                (u - v).abs() <= 2e-6 + 1e-5 * v.abs(),
                "{what}[{i}]: {u} vs {v}"
            );
        }
    }
}

#[test]
fn fused_adamw_matches_burn_adamw_step_by_step() {
    use burn::optim::{AdamWConfig, Optimizer};
    use selfsup::train::optim::FusedAdamW;
    let device = Device::flex();
    device.seed(17);
    let fused = FusedAdamW::new(0.05, 1e-8);
    let reference = AdamWConfig::new()
        .with_weight_decay(0.05)
        .with_epsilon(1e-8)
        .build();
    // An odd size (partial chunk) and a rank-3 parameter.
    let w0 = Tensor::<3>::random([3, 7, 1001], Distribution::Normal(0.0, 1.0), &device);
    let (mut wf, mut wr) = (w0.clone(), w0.clone());
    let (mut sf, mut sr) = (None, None);
    for step in 0..5 {
        let g = Tensor::<3>::random([3, 7, 1001], Distribution::Normal(0.0, 0.1), &device);
        let lr = 1e-3 * (step + 1) as f64;
        let (w, s) = fused.step(lr, wf, g.clone(), sf);
        (wf, sf) = (w, s);
        let (w, s) = reference.step(lr, wr, g, sr);
        (wr, sr) = (w, s);
        let (a, b) = (sf.as_ref().unwrap(), sr.as_ref().unwrap());
        assert_eq!(a.momentum.time, b.momentum.time);
        assert_ne!(
            values(wf.clone()),
            values(w0.clone()),
            "the step moved the parameters"
        );
        assert_close(
            &format!("step {step} w"),
            &values(wf.clone()),
            &values(wr.clone()),
            1e-6,
        );
        assert_close(
            &format!("step {step} m"),
            &values(a.momentum.moment_1.clone()),
            &values(b.momentum.moment_1.clone()),
            1e-6,
        );
        assert_close(
            &format!("step {step} v"),
            &values(a.momentum.moment_2.clone()),
            &values(b.momentum.moment_2.clone()),
            1e-6,
        );
    }
}

#[test]
fn fused_backward_sums_are_reproducible() {
    // dW of the convolution and dweight/dbias of the layer norm are sums over images/rows done
    // in parallel; they are summed in a fixed order, so repeated runs agree bit for bit.
    use selfsup::nn::fused::{conv2d, layer_norm};
    let device = Device::flex().autodiff();
    device.seed(23);
    let conv = conv_layer(&CONV_CASES[4], &device);
    let x = Tensor::<4>::random([70, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    // 3×3 stride 1 with ≥ 16 channels: the Winograd weight gradient's partial sums
    let wconv = conv_layer(&CONV_CASES[10], &device);
    let xw = Tensor::<4>::random([40, 24, 4, 4], Distribution::Normal(0.0, 1.0), &device);
    let xl = Tensor::<3>::random([9, 100, 40], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<1>::ones([40], &device).require_grad();
    let b = Tensor::<1>::zeros([40], &device).require_grad();
    let run = || {
        let gc = conv2d(&conv, x.clone()).powi_scalar(3).sum().backward();
        let gw = conv2d(&wconv, xw.clone()).powi_scalar(3).sum().backward();
        let gl = layer_norm(xl.clone(), w.clone(), b.clone(), 1e-5)
            .unwrap()
            .powi_scalar(3)
            .sum()
            .backward();
        (
            values(conv.weight.val().grad(&gc).unwrap()),
            values(wconv.weight.val().grad(&gw).unwrap()),
            values(w.grad(&gl).unwrap()),
            values(b.grad(&gl).unwrap()),
        )
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(run(), first);
    }
}

/// (leading dims, K, N, bias, non-contiguous input): 2-D/3-D/4-D inputs, K = 1, odd widths, one
/// large enough for the parallel GEMM, and an input that is a transposed view.
const LINEAR_CASES: [(&[usize], usize, usize, bool, bool); 7] = [
    (&[5], 3, 7, true, false),
    (&[2, 9], 1, 4, true, false),
    (&[3, 4, 5], 17, 9, false, false),
    (&[2, 150], 200, 130, true, false),
    (&[1, 1], 8, 1, true, false),
    (&[4, 6], 10, 12, true, true),
    (&[33], 64, 31, false, true),
];

/// A linear case's input and output shapes as 4-D ones (rank-generic through a 4-D view: the
/// leading dims padded with ones): `[.., K]` and `[.., N]`.
fn linear_dims4(lead: &[usize], k: usize, n: usize) -> ([usize; 4], [usize; 4]) {
    let mut dims = vec![1usize; 3 - lead.len()];
    dims.extend(lead);
    dims.push(k);
    let input: [usize; 4] = dims.try_into().unwrap();
    let mut output = input;
    output[3] = n;
    (input, output)
}

#[test]
fn fused_linear_matches_burn_values_and_gradients() {
    use burn::nn::LinearConfig;
    use selfsup::nn::fused_linear::{linear, linear_transposed};
    let device = Device::flex().autodiff();
    for (i, &(lead, k, n, bias, strided)) in LINEAR_CASES.iter().enumerate() {
        device.seed(300 + i as u64);
        let layer = LinearConfig::new(k, n).with_bias(bias).init(&device);
        let what = format!("leading {lead:?} K {k} N {n} bias {bias} strided {strided}");
        let (dims4, out4) = linear_dims4(lead, k, n);
        let x = if strided {
            // Built as [.., K, last] and transposed: a view whose last dim is not contiguous.
            let mut d = dims4;
            d.swap(2, 3);
            Tensor::<4>::random(d, Distribution::Normal(0.0, 1.0), &device).swap_dims(2, 3)
        } else {
            Tensor::<4>::random(dims4, Distribution::Normal(0.0, 1.0), &device)
        };
        let cot = Tensor::<4>::random(out4, Distribution::Normal(0.0, 1.0), &device);

        let xf = x.clone().require_grad();
        let yf = linear(&layer, xf.clone());
        let gf = (yf.clone() * cot.clone()).sum().backward();
        let xr = x.clone().require_grad();
        let yr = layer.forward(xr.clone());
        let gr = (yr.clone() * cot.clone()).sum().backward();
        assert_eq!(yf.dims(), out4, "{what}");
        assert_close(&format!("{what} output"), &values(yf), &values(yr), 1e-5);
        let g = |t: Tensor<4>, grads| values(t.grad(grads).unwrap());
        assert_close(&format!("{what} dx"), &g(xf, &gf), &g(xr, &gr), 1e-5);
        let (wf, wr) = (layer.weight.val().grad(&gf), layer.weight.val().grad(&gr));
        assert_close(
            &format!("{what} dW"),
            &values(wf.unwrap()),
            &values(wr.unwrap()),
            1e-5,
        );
        if let Some(b) = &layer.bias {
            let (bf, br) = (b.val().grad(&gf).unwrap(), b.val().grad(&gr).unwrap());
            assert_close(&format!("{what} db"), &values(bf), &values(br), 1e-5);
        }

        // The same weight read transposed, as a tied output head: E [N, K].
        let e = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let xf = x.clone().require_grad();
        let gf = (linear_transposed(xf.clone(), e.clone()) * cot.clone())
            .sum()
            .backward();
        let xr = x.clone().require_grad();
        let yr = xr.clone().matmul(e.clone().transpose().unsqueeze::<4>());
        let gr = (yr * cot.clone()).sum().backward();
        assert_close(
            &format!("{what} transposed dx"),
            &g(xf, &gf),
            &g(xr, &gr),
            1e-5,
        );
        let (ef, er) = (e.grad(&gf).unwrap(), e.grad(&gr).unwrap());
        assert_close(
            &format!("{what} transposed dE"),
            &values(ef),
            &values(er),
            1e-5,
        );
    }
}

/// `linear_gelu` (the GEMM without its bias, then bias + GELU in one pass, the bias gradient in
/// the GELU's backward pass): the same bits as the fused linear followed by the fused GELU, values
/// and the gradients of x, W and b; within float tolerance of burn's `gelu(Linear::forward)`.
/// Layers without a bias take the plain path.
#[test]
fn fused_linear_gelu_equals_linear_then_gelu() {
    use burn::nn::LinearConfig;
    use selfsup::nn::fused_linear::{linear, linear_gelu};
    let device = Device::flex().autodiff();
    for (i, &(lead, k, n, bias, _)) in LINEAR_CASES.iter().enumerate() {
        device.seed(500 + i as u64);
        let layer = LinearConfig::new(k, n).with_bias(bias).init(&device);
        if let Some(b) = &layer.bias {
            // burn initializes biases uniformly, so adding one in the wrong place shows.
            assert!(values(b.val()).iter().any(|&v| v != 0.0));
        }
        let (dims4, out4) = linear_dims4(lead, k, n);
        let what = format!("leading {lead:?} K {k} N {n} bias {bias}");
        let x = Tensor::<4>::random(dims4, Distribution::Normal(0.0, 2.0), &device);
        let cot = Tensor::<4>::random(out4, Distribution::Normal(0.0, 1.0), &device);

        let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
            let xt = x.clone().require_grad();
            let y = f(xt.clone());
            let grads = (y.clone() * cot.clone()).sum().backward();
            let mut out = vec![values(y), values(xt.grad(&grads).unwrap())];
            out.push(values(layer.weight.val().grad(&grads).unwrap()));
            if let Some(b) = &layer.bias {
                out.push(values(b.val().grad(&grads).unwrap()));
            }
            out
        };
        let fused = run(&|x| linear_gelu(&layer, x));
        let unfused = run(&|x| selfsup::nn::fused::gelu(linear(&layer, x)).unwrap());
        let burn = run(&|x| burn::tensor::activation::gelu(layer.forward(x)));
        for (j, name) in ["output", "dx", "dW", "db"]
            .iter()
            .enumerate()
            .take(fused.len())
        {
            assert_eq!(
                fused[j], unfused[j],
                "{what} {name}: not the unfused kernels' bits"
            );
            assert_close(&format!("{what} {name} vs burn"), &fused[j], &burn[j], 1e-4);
        }
    }
    // Plain device: the forward alone.
    let device = Device::flex();
    device.seed(77);
    let layer = LinearConfig::new(7, 19).init(&device);
    let x = Tensor::<3>::random([2, 5, 7], Distribution::Normal(0.0, 2.0), &device);
    assert_eq!(
        values(linear_gelu(&layer, x.clone())),
        values(selfsup::nn::fused::gelu(linear(&layer, x)).unwrap())
    );
}

/// `linear_residual` (the GEMM accumulating into `residual + b`): values and the gradients of
/// x, W, b and the residual against `residual + Linear::forward(x)`, with the residual also used
/// elsewhere (its gradients must add up) and given as a transposed view in the strided cases.
#[test]
fn fused_linear_residual_matches_residual_plus_linear() {
    use burn::nn::LinearConfig;
    use selfsup::nn::fused_linear::linear_residual;
    let device = Device::flex().autodiff();
    for (i, &(lead, k, n, bias, strided)) in LINEAR_CASES.iter().enumerate() {
        device.seed(700 + i as u64);
        let layer = LinearConfig::new(k, n).with_bias(bias).init(&device);
        let (dims, out) = linear_dims4(lead, k, n);
        let what = format!("leading {lead:?} K {k} N {n} bias {bias} strided {strided}");
        let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        let residual = if strided {
            let mut d = out;
            d.swap(2, 3);
            Tensor::<4>::random(d, Distribution::Normal(0.0, 3.0), &device).swap_dims(2, 3)
        } else {
            Tensor::<4>::random(out, Distribution::Normal(0.0, 3.0), &device)
        };
        let cot = Tensor::<4>::random(out, Distribution::Normal(0.0, 1.0), &device);
        let cot2 = Tensor::<4>::random(out, Distribution::Normal(0.0, 1.0), &device);
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let (xt, rt) = (x.clone().require_grad(), residual.clone().require_grad());
            let y = f(xt.clone(), rt.clone());
            let loss = (y.clone() * cot.clone()).sum() + (rt.clone() * cot2.clone()).sum();
            let grads = loss.backward();
            let mut v = vec![
                values(y),
                values(xt.grad(&grads).unwrap()),
                values(rt.grad(&grads).unwrap()),
                values(layer.weight.val().grad(&grads).unwrap()),
            ];
            if let Some(b) = &layer.bias {
                v.push(values(b.val().grad(&grads).unwrap()));
            }
            v
        };
        let fused = run(&|x, r| linear_residual(&layer, x, r));
        let reference = run(&|x, r| r + layer.forward(x));
        for (j, name) in ["output", "dx", "d residual", "dW", "db"]
            .iter()
            .enumerate()
            .take(fused.len())
        {
            assert_close(&format!("{what} {name}"), &fused[j], &reference[j], 1e-5);
        }
        // The residual's gradient is the two cotangents' sum, exactly.
        let sum: Vec<f32> = values(cot.clone() + cot2.clone());
        assert_eq!(fused[2], sum, "{what}: the residual's gradient");
    }
    // Plain device, untracked.
    let device = Device::flex();
    device.seed(78);
    let layer = LinearConfig::new(7, 19).init(&device);
    let x = Tensor::<3>::random([2, 5, 7], Distribution::Normal(0.0, 1.0), &device);
    let r = Tensor::<3>::random([2, 5, 19], Distribution::Normal(0.0, 1.0), &device);
    assert_close(
        "plain",
        &values(linear_residual(&layer, x.clone(), r.clone())),
        &values(r + layer.forward(x)),
        1e-5,
    );
}

#[test]
fn fused_linear_without_autodiff_and_without_tracked_input() {
    use burn::nn::LinearConfig;
    use selfsup::nn::fused_linear::linear;
    // Plain device: same values as burn's Linear.
    let device = Device::flex();
    device.seed(41);
    let layer = LinearConfig::new(6, 5).init(&device);
    let x = Tensor::<3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device);
    assert_close(
        "plain",
        &values(linear(&layer, x.clone())),
        &values(layer.forward(x)),
        1e-6,
    );
    // Autodiff device, input not tracked (the first layer of a network): only dW and db.
    let device = Device::flex().autodiff();
    device.seed(42);
    let layer = LinearConfig::new(6, 5).init(&device);
    let x = Tensor::<2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device);
    let gf = linear(&layer, x.clone()).powi_scalar(2).sum().backward();
    let gr = layer.forward(x).powi_scalar(2).sum().backward();
    let w = layer.weight.val();
    assert_close(
        "untracked input dW",
        &values(w.grad(&gf).unwrap()),
        &values(w.grad(&gr).unwrap()),
        1e-5,
    );
}

#[test]
fn fused_cross_entropy_matches_log_softmax_gather_values_and_gradients() {
    use selfsup::nn::fused_loss::cross_entropy;
    let device = Device::flex().autodiff();
    // (rows, classes, logit scale): one class, rows not a multiple of the 64-row blocks, large
    // logits (the max subtraction matters), a GPT-bench-like shape.
    for (i, &(n, v, sd)) in [(3, 1, 1.0), (5, 7, 1.0), (130, 11, 30.0), (256, 256, 2.0)]
        .iter()
        .enumerate()
    {
        device.seed(500 + i as u64);
        let x = Tensor::<2>::random([n, v], Distribution::Normal(0.0, sd), &device);
        let t: Vec<i64> = (0..n).map(|r| ((r * 7 + i) % v) as i64).collect();
        let t = Tensor::<1, Int>::from_data(TensorData::new(t, [n]), &device);
        let xf = x.clone().require_grad();
        let lf = cross_entropy(xf.clone(), t.clone());
        let gf = (lf.clone() * 3.0).backward();
        let xr = x.clone().require_grad();
        let lr = burn::tensor::activation::log_softmax(xr.clone(), 1)
            .gather(1, t.clone().reshape([n, 1]))
            .mean()
            .neg();
        let gr = (lr.clone() * 3.0).backward();
        let what = format!("N {n} V {v} sd {sd}");
        assert_close(&format!("{what} loss"), &values(lf), &values(lr), 1e-5);
        let (df, dr) = (xf.grad(&gf).unwrap(), xr.grad(&gr).unwrap());
        assert_close(&format!("{what} dlogits"), &values(df), &values(dr), 1e-5);
    }
}
