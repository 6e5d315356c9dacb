//! End-to-end tests that start the real `wick` binary and talk to it with real clients land with
//! the HTTP server (issue #5). The engine's own integration tests live in `engine/tests/`.
