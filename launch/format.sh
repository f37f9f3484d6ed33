#!/usr/bin/env bash
# Formats the Swift sources in place with the repository's .swift-format: what .ci/run checks with
# `swift format lint --strict`. Run it before committing; it rewrites only files whose layout differs.
set -euo pipefail
cd "$(dirname "$0")/.."
swift format format --in-place --recursive --parallel Sources Tests Fuzz Package.swift
