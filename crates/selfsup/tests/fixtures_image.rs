//! Parity with the PyTorch fixtures in ../shared/fixtures: NT-Xent (loss and gradient) and the
//! conv_encoder building blocks (Conv2d, BatchNorm in training mode with running statistics,
//! ReLU, global pooling, Linear, cross-entropy; values and gradients).

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use selfsup::methods::simclr::nt_xent;
use selfsup::nn::{encoder::global_avg_pool, BatchNorm};
mod common;
use common::{assert_close, get, json, tensors, vec};

#[test]
fn nt_xent_matches_pytorch_loss_and_gradient() {
    let meta = json("nt_xent.json");
    let st = tensors("nt_xent.safetensors");
    let device = Device::flex().autodiff();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let tau = case["tau"].as_f64().unwrap();
        let z: Tensor<2> = get(&st, case["input"].as_str().unwrap(), &device).require_grad();
        let loss = nt_xent(z.clone(), tau);
        let value = loss.clone().into_scalar::<f32>() as f64;
        let want = case["loss"].as_f64().unwrap();
        assert!(
            (value - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{name}: loss {value}, want {want}"
        );
        let grads = loss.backward();
        let g = z.grad(&grads).unwrap();
        let want_g = &st.tensors[case["grad"].as_str().unwrap()].1;
        assert_close(name, &vec(g), want_g, 1e-5, 1e-4);
    }
}

#[test]
fn conv_encoder_blocks_match_pytorch_values_and_gradients() {
    let meta = json("conv_encoder.json");
    let w = tensors("conv_encoder.weights.safetensors");
    let io = tensors("conv_encoder.io.safetensors");
    let device = Device::flex().autodiff();

    let mut conv1 = Conv2dConfig::new([1, 8], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(&device);
    conv1.weight = Param::from_tensor(get::<4>(&w, "conv1.weight", &device).require_grad());
    let mut bn = BatchNorm::new(8, &device);
    bn.weight = Param::from_tensor(get::<1>(&w, "bn1.weight", &device).require_grad());
    bn.bias = Param::from_tensor(get::<1>(&w, "bn1.bias", &device).require_grad());
    bn.running_mean
        .update(get::<1>(&w, "bn1.running_mean", &device));
    bn.running_var
        .update(get::<1>(&w, "bn1.running_var", &device));
    let mut conv2 = Conv2dConfig::new([8, 16], [3, 3])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    conv2.weight = Param::from_tensor(get::<4>(&w, "conv2.weight", &device).require_grad());
    conv2.bias = Some(Param::from_tensor(
        get::<1>(&w, "conv2.bias", &device).require_grad(),
    ));
    let mut fc = LinearConfig::new(16, 10).init(&device);
    // burn stores linear weights [in, out]; PyTorch [out, in].
    fc.weight = Param::from_tensor(
        get::<2>(&w, "fc.weight", &device)
            .transpose()
            .detach()
            .require_grad(),
    );
    fc.bias = Some(Param::from_tensor(
        get::<1>(&w, "fc.bias", &device).require_grad(),
    ));

    let x: Tensor<4> = get(&io, "input", &device).require_grad();
    let c1 = conv1.forward(x.clone());
    let b1 = bn.forward(c1.clone());
    let r1 = relu(b1.clone());
    let c2 = conv2.forward(r1);
    let pooled = global_avg_pool(relu(c2.clone()));
    let logits = fc.forward(pooled.clone());

    assert_close(
        "act.conv1_out",
        &vec(c1),
        &io.tensors["act.conv1_out"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "act.bn1_out",
        &vec(b1),
        &io.tensors["act.bn1_out"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "act.conv2_out",
        &vec(c2),
        &io.tensors["act.conv2_out"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "act.pooled",
        &vec(pooled),
        &io.tensors["act.pooled"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "act.logits",
        &vec(logits.clone()),
        &io.tensors["act.logits"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "bn1.running_mean_after",
        &vec(bn.running_mean.value()),
        &io.tensors["bn1.running_mean_after"].1,
        1e-6,
        1e-5,
    );
    assert_close(
        "bn1.running_var_after",
        &vec(bn.running_var.value()),
        &io.tensors["bn1.running_var_after"].1,
        1e-6,
        1e-5,
    );

    let labels: Vec<i64> = meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let n = labels.len();
    let mut onehot = vec![0f32; n * 10];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * 10 + l as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, 10]), &device);
    let loss = (log_softmax(logits, 1) * onehot)
        .sum()
        .div_scalar(-(n as f64));
    let value = loss.clone().into_scalar::<f32>() as f64;
    let want = meta["loss"].as_f64().unwrap();
    assert!(
        (value - want).abs() < 1e-5 * want,
        "loss {value} want {want}"
    );

    let grads = loss.backward();
    let g = |t: Tensor<4>| vec(t.grad(&grads).unwrap());
    assert_close(
        "grad.conv1.weight",
        &g(conv1.weight.val()),
        &io.tensors["grad.conv1.weight"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "grad.conv2.weight",
        &g(conv2.weight.val()),
        &io.tensors["grad.conv2.weight"].1,
        1e-5,
        1e-4,
    );
    let g1 = |t: Tensor<1>| vec(t.grad(&grads).unwrap());
    assert_close(
        "grad.bn1.weight",
        &g1(bn.weight.val()),
        &io.tensors["grad.bn1.weight"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "grad.bn1.bias",
        &g1(bn.bias.val()),
        &io.tensors["grad.bn1.bias"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "grad.conv2.bias",
        &g1(conv2.bias.as_ref().unwrap().val()),
        &io.tensors["grad.conv2.bias"].1,
        1e-5,
        1e-4,
    );
    assert_close(
        "grad.fc.bias",
        &g1(fc.bias.as_ref().unwrap().val()),
        &io.tensors["grad.fc.bias"].1,
        1e-5,
        1e-4,
    );
    let gfc = vec(fc.weight.val().grad(&grads).unwrap().transpose());
    assert_close(
        "grad.fc.weight",
        &gfc,
        &io.tensors["grad.fc.weight"].1,
        1e-5,
        1e-4,
    );
    assert_close("grad.input", &g(x), &io.tensors["grad.input"].1, 1e-5, 1e-4);
}
