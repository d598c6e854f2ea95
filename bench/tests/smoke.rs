//! The smoke version of `make bench` (tiny counts, the mesh in-process): every case runs, the report
//! has every key, the reconcile is clean and BENCHMARKS.md renders, so the harness cannot rot.
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bench_harness_runs_end_to_end_with_tiny_counts() {
    let dir = tempfile::tempdir().unwrap();
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis_port = redis_url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(6379);
    let postgres_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let config = mesh_bench::Config {
        rounds: 1,
        seconds: 0.3,
        concurrency: 4,
        mesh_binary: None,
        redis_url,
        redis_port,
        postgres_url,
        out_dir: dir.path().join("bench"),
        markdown: Some(dir.path().join("BENCHMARKS.md")),
        smoke: true,
        h2load: None,
    };
    let report = tokio::time::timeout(Duration::from_secs(240), mesh_bench::run(&config)).await.unwrap().unwrap();
    assert!(!report.failed, "{report:#?}");
    assert_eq!((report.reconcile_differences, report.units_oversold), (0, 0));
    for case in [
        "rpc_ceiling",
        "reserve_uniform_1",
        "evalsha_hot_1",
        "reserve_hot_1",
        "evalsha_random_1",
        "evalsha_random_3",
        "reserve_uniform_3",
        "pg_hot_sync",
        "pg_hot_async",
        "pg_random_3_sync",
        "pg_random_3_async",
        "reserve_unloaded",
        "reserve_zipf_1",
        "reserve_uniform_10",
        "atp_read",
        "ingest_100",
        "pg_record_only",
        "source_order",
    ] {
        let median = &report.cases.get(case).unwrap_or_else(|| panic!("case {case} missing")).median;
        assert!(median.throughput > 0.0 && median.ops > 0, "{case}: {median:?}");
    }
    assert_eq!(report.open_loop.len(), 8);
    assert!(report.reserve_vs_evalsha > 0.0 && report.reserve_vs_pg_hot > 0.0 && report.reserve_p50_ms_unloaded > 0.0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench/report.json")).unwrap()).unwrap();
    for key in [
        "reserve_vs_evalsha",
        "reserve_vs_ceiling",
        "reserve_vs_pg_hot",
        "reserve_vs_pg_random",
        "reserve_p50_ms_unloaded",
        "reserve_p99_ms_at_70pct",
        "reserve_cpu_us_per_op",
    ] {
        assert!(json[key].is_number(), "report.json lacks {key}");
    }
    let markdown = std::fs::read_to_string(dir.path().join("BENCHMARKS.md")).unwrap();
    assert!(markdown.contains("| `reserve_vs_evalsha` |") && markdown.contains("docs/bench-latency.svg"));
    assert!(std::fs::read_to_string(dir.path().join("bench/latency.svg")).unwrap().starts_with("<svg"));
}
