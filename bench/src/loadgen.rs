//! The load generator: closed loop (C workers, each sends its next request when the last one
//! answers; measures the maximum) and open loop (requests start on a fixed schedule whatever the
//! answers; latency counts from the scheduled start, so a stalled server cannot hide its queue).
//! Latencies go into an HDR histogram in microseconds.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::sync::Mutex;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunStats {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl RunStats {
    /// Completed operations per second (errors excluded).
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q`, in ms.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op(seq)` from `concurrency` workers for `duration`.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> RunStats
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let total = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next, errors, total) = (op.clone(), next.clone(), errors.clone(), total.clone());
            tokio::spawn(async move {
                let mut local = histogram();
                while Instant::now() < deadline {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    if op(seq).await {
                        local.saturating_record(sent.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                total.lock().await.add(&local).ok();
            })
        })
        .collect();
    for worker in workers {
        worker.await.ok();
    }
    let elapsed = started.elapsed();
    let latency_us = total.lock().await.clone();
    RunStats { ops: latency_us.len(), errors: errors.load(Ordering::Relaxed), elapsed, latency_us }
}

/// Starts `op(seq)` at `rate` per second for `duration` (each on its own task).
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, op: F) -> RunStats
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let errors = Arc::new(AtomicU64::new(0));
    let total = Arc::new(Mutex::new(histogram()));
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let count = (duration.as_secs_f64() * rate).max(1.0) as u64;
    let mut tasks = Vec::with_capacity(count as usize);
    for seq in 0..count {
        let scheduled = started + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (op, errors, total) = (op.clone(), errors.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            if op(seq).await {
                let latency = scheduled.elapsed().as_micros() as u64;
                total.lock().await.saturating_record(latency);
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.ok();
    }
    let elapsed = started.elapsed();
    let latency_us = total.lock().await.clone();
    RunStats { ops: latency_us.len(), errors: errors.load(Ordering::Relaxed), elapsed, latency_us }
}

/// A Zipf(s) sampler over 0..n by inverse CDF (the hot few get most of the traffic).
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// Builds the table for n items with exponent s.
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for value in &mut cdf {
            *value /= sum;
        }
        Self { cdf }
    }

    /// Maps a uniform u in [0, 1) to an item.
    pub fn sample(&self, u: f64) -> usize {
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A cheap deterministic hash of a sequence number to [0, 1) (splitmix64).
pub fn unit(seq: u64) -> f64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
