mod common;
use candle_core::{Device, Tensor};
use wick_engine::attention::ContiguousAttention;
#[test]
fn probe() {
    let loaded = common::load_default(Some(candle_core::DType::F32));
    let cfg = loaded.config().clone();
    let s: Vec<u32> = (0..40).map(|i| 100 + i * 37).collect();
    let run = |chunks: &[usize]| {
        let mut attn = ContiguousAttention::new(cfg.num_hidden_layers);
        let mut outs = vec![];
        let mut at = 0;
        for &c in chunks {
            let tokens = Tensor::new(&s[at..at + c], &Device::Cpu).unwrap();
            let positions = Tensor::arange(at as u32, (at + c) as u32, &Device::Cpu).unwrap();
            outs.push(
                loaded
                    .model
                    .forward(&tokens, &positions, None, &mut attn)
                    .unwrap(),
            );
            at += c;
        }
        Tensor::cat(&outs, 0).unwrap()
    };
    let d = |x: &Tensor, y: &Tensor| {
        (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let a = run(&[40]);
    for ch in [
        &[5usize, 35][..],
        &[1; 40][..],
        &[16, 24][..],
        &[8, 32][..],
        &[4, 36][..],
    ] {
        eprintln!("whole vs {:?}: {:?}", &ch[..2], &d(&a, &run(ch))[..8]);
    }
}
