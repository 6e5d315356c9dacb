//! SIGTERM drains: `/ready` turns 503 and new requests are refused while the listener stays open
//! for the drain delay, the in-flight stream runs to its end, and the process exits 0.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use wick_tests::{http_get, request, request_head, Server};

#[test]
fn sigterm_finishes_the_in_flight_stream_then_exits_cleanly() {
    let mut server = Server::start(&["--drain-delay-secs", "2", "--drain-grace-secs", "60"]);
    let port = server.port;
    let body = r#"{"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Once upon a time", "max_tokens": 48,
                   "temperature": 0, "stream": true, "ignore_eos": true}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
        .write_all(request_head("POST", "/v1/completions", Some(body)).as_bytes())
        .expect("send");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // Wait for the first generated chunk, then ask the server to stop.
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "stream ended early"
        );
        if line.starts_with("data: {") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());

    // Within the drain delay: still listening, but not ready and refusing new work.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut ready = http_get(port, "/ready").map(|r| r.0);
    while ready != Some(503) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        ready = http_get(port, "/ready").map(|r| r.0);
    }
    assert_eq!(ready, Some(503), "/ready while draining");
    let refused = request(port, "POST", "/v1/completions", Some(body)).map(|r| r.0);
    assert_eq!(refused, Some(503), "a new request while draining");

    // The in-flight stream still runs to its end.
    let mut rest = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read") == 0 {
            break;
        }
        rest.push_str(&line);
    }
    assert!(rest.contains(r#""finish_reason":"length""#), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let chunks = rest.matches("data: {").count() + 1;
    assert!(chunks >= 48, "only {chunks} chunks");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "wick did not exit after draining");
        std::thread::sleep(Duration::from_millis(50));
    }
}
