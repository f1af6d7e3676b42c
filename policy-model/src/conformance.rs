//! Conformance cases (format: shared/conformance/README.md): parse a case file and run it through the real engine.
