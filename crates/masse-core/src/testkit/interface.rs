//! Interface conformance suite.
