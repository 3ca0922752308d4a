//! myelin-cni: a CNI 1.0/1.1 plugin. It holds no state of its own: every
//! command is forwarded to the node's agent over its unix socket, so the
//! plugin starts, asks, answers and exits in a few milliseconds.
//!
//! Contract (CNI spec): the network config on stdin, parameters in CNI_*
//! variables, the result or an error object `{cniVersion, code, msg, details}`
//! on stdout, a non-zero exit on error.
#![forbid(unsafe_code)]

mod cni;

fn main() {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let (out, code) = cni::run(&env, &stdin);
    if !out.is_empty() {
        println!("{out}");
    }
    std::process::exit(code);
}
