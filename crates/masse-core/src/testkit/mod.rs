//! Conformance suites for third-party registries and interfaces.
