# Thin wrappers around cargo and the scripts in scripts/. `make` alone lists the targets.
.DEFAULT_GOAL := help
SHELL := bash

# Tools that cargo does not bring (helm, grpcurl, kubernetes-validate), from `make tools`.
TOOLS_BIN := $(CURDIR)/.tools/bin
# Input of `make replay`: an Olist-style CSV folder, and a multiplier on its starting stock.
DATASET ?= ../shared/data/olist-ecommerce-subset
STOCK_FACTOR ?= 1.0

.PHONY: help build run run-availability run-reservation run-sourcing run-replenishment \
	test replay lint helm-lint tools bench redis-cluster

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build the whole workspace (debug)
	cargo build --workspace

run: ## Run the whole mesh in one process on embedded defaults (SQLite, in-process counters)
	cargo run --release -p inventory-mesh -- run

run-availability: ## Run only the availability service
	cargo run --release -p inventory-mesh -- serve availability

run-reservation: ## Run only the reservation service
	cargo run --release -p inventory-mesh -- serve reservation

run-sourcing: ## Run only the sourcing service
	cargo run --release -p inventory-mesh -- serve sourcing

run-replenishment: ## Run only the replenishment service
	cargo run --release -p inventory-mesh -- serve replenishment

test: export PATH := $(TOOLS_BIN):$(PATH)
test: tools ## Run every test: rustfmt and clippy, nextest over the workspace, grpcurl smoke test, Helm checks
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo nextest run --workspace --no-fail-fast
	bash scripts/grpcurl-smoke.sh
	bash scripts/helm-check.sh

bench: ## Benchmark Reserve against the RPC ceiling, EVALSHA and PostgreSQL row locks (~10 min; writes BENCHMARKS.md)
	cargo build --release -p inventory-mesh -p mesh-bench
	bash scripts/install-h2load.sh || echo "h2load unavailable: the ceiling is measured by mesh-bench only"
	target/release/mesh-bench run --mesh-binary target/release/inventory-mesh --h2load .tools/bin/h2load $(BENCH_ARGS)

redis-cluster: ## Start a 3-master Redis Cluster on 127.0.0.1:7101-7103 (the tests start it themselves)
	bash scripts/redis-cluster.sh start

replay: ## Replay DATASET through the mesh (DATASET=dir STOCK_FACTOR=1.0)
	cargo run --release -p inventory-mesh -- replay --dataset $(DATASET) --stock-factor $(STOCK_FACTOR)

lint: ## cargo fmt --check, then clippy on all targets with -D warnings
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

helm-lint: tools ## Lint, render and validate the Helm chart (scripts/helm-check.sh)
	bash scripts/helm-check.sh

tools: ## Install helm, grpcurl, kubernetes-validate and grpcio into .tools/ (git-ignored)
	bash scripts/install-tools.sh
