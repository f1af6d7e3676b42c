//! The test Kubernetes API server as a process, for end-to-end tests that run `tollgate run --kubernetes` inside a
//! node network namespace: `tollgate-fake-apiserver FIXTURE_DIR` serves list/watch of the fixtures on
//! 127.0.0.1:<port> and prints `http://127.0.0.1:<port>` once listening. The server itself lives with the in-process
//! tests in proxy/tests/support/api_server.rs.

#[allow(dead_code)]
#[path = "../../../proxy/tests/support/api_server.rs"]
mod api_server;
#[path = "../../../proxy/tests/support/structural.rs"]
mod structural;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: tollgate-fake-apiserver FIXTURE_DIR");
        std::process::exit(2);
    };
    let server = api_server::ApiServer::start(std::path::Path::new(&dir)).await;
    println!("http://{}", server.addr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Serves until killed (the test's ChildGuard kills it by PID).
    std::future::pending::<()>().await;
}
