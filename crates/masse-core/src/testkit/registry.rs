//! Registry conformance suite.
