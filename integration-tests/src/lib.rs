//! Test harness: starts real servers for the integration tests.
