pub mod api_server;
// The scale generator is used by the scale test and the bench, not by every test binary.
#[allow(dead_code)]
pub mod scale;
pub mod structural;
// The in-process proxy harness is used by the HTTP tests, not by every test binary.
#[allow(dead_code)]
pub mod inproc;
