//! Signing cost per KiB of body: the CMS signature and one Standard Webhooks
//! signature (goal: under 5 µs per KiB).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hookrelay::delivery::signing::{body_signature, standard_signature};
use std::hint::black_box;

fn signing(c: &mut Criterion) {
    let secret = hookrelay::secrets::generate();
    let mut group = c.benchmark_group("sign");
    for kib in [1usize, 16, 256] {
        let body = vec![b'x'; kib * 1024];
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("both_signatures_{kib}KiB"), |b| {
            b.iter(|| {
                let cms = body_signature(black_box(&secret), black_box(&body));
                let std = standard_signature(black_box(&secret), "delivery-id", 1_700_000_000, black_box(&body));
                (cms, std)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
