//! The plugin's logic, separate from process I/O so that it is unit-tested.

use myelin_api::{ClientError, Deleted, Endpoint, EndpointAddRequest, ErrorCode, Labels, Status};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Versions whose config and result formats this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

// CNI well-known error codes.
pub const E_INCOMPATIBLE_VERSION: u32 = 1;
pub const E_CONTAINER_UNKNOWN: u32 = 3;
pub const E_INVALID_ENV: u32 = 4;
pub const E_IO: u32 = 5;
pub const E_DECODE: u32 = 6;
pub const E_INVALID_CONFIG: u32 = 7;
pub const E_TRY_AGAIN_LATER: u32 = 11;
pub const E_PLUGIN_NOT_AVAILABLE: u32 = 50;
// Plugin-specific codes (>= 100).
pub const E_POOL_EXHAUSTED: u32 = 100;
pub const E_AGENT_REJECTED: u32 = 101;

#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }
}

/// The part of the network configuration this plugin reads. Other keys
/// (runtimeConfig, args, capabilities, prevResult, ...) are the runtime's and
/// are accepted as they are.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub agent_socket: Option<String>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// CNI conventions' `args`: the plugin reads `args.cni.labels`; the rest is the runtime's.
    #[serde(default)]
    pub args: Option<Value>,
}

/// Run one CNI command; returns what to print and the exit code.
pub fn run(env: &HashMap<String, String>, stdin: &[u8]) -> (String, i32) {
    let version_hint = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_owned());
    match dispatch(env, stdin) {
        Ok(Some(v)) => (v.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => {
            (json!({"cniVersion": version_hint, "code": e.code, "msg": e.msg, "details": e.details}).to_string(), 1)
        }
    }
}

fn dispatch(env: &HashMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    if command == "VERSION" {
        return Ok(Some(json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED})));
    }
    let conf = parse_conf(stdin)?;
    let client = myelin_api::Client::new(conf.agent_socket.as_deref().unwrap_or(myelin_api::DEFAULT_AGENT_SOCKET));
    match command {
        "ADD" => add(env, &conf, &client).map(Some),
        "DEL" => del(env, &client).map(|()| None),
        "CHECK" => check(env, &conf, &client).map(|()| None),
        "STATUS" => status(&client).map(|()| None),
        "GC" => gc(stdin, &client).map(|()| None),
        "" => Err(CniError::new(
            E_INVALID_ENV,
            "CNI_COMMAND is not set",
            "set CNI_COMMAND to ADD, DEL, CHECK, STATUS, GC or VERSION",
        )),
        other => Err(CniError::new(
            E_INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
        )),
    }
}

pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            E_DECODE,
            "cannot decode the network configuration",
            format!("{e}: the config must be a JSON object with cniVersion, name and type"),
        )
    })?;
    if !SUPPORTED.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            E_INCOMPATIBLE_VERSION,
            format!("unsupported cniVersion {:?}", conf.cni_version),
            format!("myelin-cni supports {}", SUPPORTED.join(", ")),
        ));
    }
    if conf.plugin_type.is_empty() {
        return Err(CniError::new(E_INVALID_CONFIG, "network config: type is empty", "set type to myelin-cni"));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(E_INVALID_CONFIG, "network config: name is empty", "give the network a name"));
    }
    if let Some(s) = &conf.agent_socket {
        if !s.starts_with('/') {
            return Err(CniError::new(
                E_INVALID_CONFIG,
                format!("network config: agentSocket {s:?} is not an absolute path"),
                "point agentSocket at the agent's unix socket, e.g. /run/myelin/agent.sock",
            ));
        }
    }
    Ok(conf)
}

fn require<'a>(env: &'a HashMap<String, String>, key: &str) -> Result<&'a str, CniError> {
    match env.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::new(
            E_INVALID_ENV,
            format!("{key} is not set"),
            format!("the container runtime must set {key}"),
        )),
    }
}

/// CNI_ARGS: `K=V;K=V`.
pub fn parse_args(s: &str) -> Result<HashMap<String, String>, CniError> {
    let mut out = HashMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                E_INVALID_ENV,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                "CNI_ARGS is a ;-separated list of KEY=VALUE",
            )
        })?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Labels from the CNI conventions' `args.cni.labels`: a list of `{"key": .., "value": ..}`,
/// both strings, each key once. None when the runtime sent no list.
pub fn labels_from_args(args: Option<&Value>) -> Result<Option<Labels>, CniError> {
    let Some(list) = args.and_then(|a| a.get("cni")).and_then(|c| c.get("labels")) else {
        return Ok(None);
    };
    let shape = "each entry is {\"key\": string, \"value\": string}";
    let Some(entries) = list.as_array() else {
        return Err(CniError::new(
            E_INVALID_CONFIG,
            format!("args.cni.labels: expected a list, got {list}"),
            format!("send \"labels\": [{{\"key\": \"app\", \"value\": \"web\"}}, ...]; {shape}"),
        ));
    };
    let mut labels = Labels::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = |name: &str| entry.get(name).and_then(Value::as_str);
        let (Some(key), Some(value)) = (field("key"), field("value")) else {
            return Err(CniError::new(
                E_INVALID_CONFIG,
                format!("args.cni.labels[{i}]: {entry} lacks a string key or value"),
                shape,
            ));
        };
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(CniError::new(
                E_INVALID_CONFIG,
                format!("args.cni.labels[{i}]: key {key:?} is given twice"),
                "give each label key once",
            ));
        }
    }
    Ok(Some(labels))
}

fn agent_error(e: ClientError) -> CniError {
    match e {
        ClientError::Unreachable { .. } => {
            CniError::new(E_TRY_AGAIN_LATER, "the myelin agent is unreachable", e.to_string())
        }
        ClientError::Api(api, _) => {
            let code = match api.code {
                ErrorCode::PoolExhausted => E_POOL_EXHAUSTED,
                ErrorCode::NetnsNotFound => E_CONTAINER_UNKNOWN,
                ErrorCode::NotFound => E_CONTAINER_UNKNOWN,
                ErrorCode::BadRequest => E_INVALID_CONFIG,
                _ => E_AGENT_REJECTED,
            };
            CniError::new(code, api.message, format!("agent error code {:?}", api.code))
        }
        other => CniError::new(E_IO, "talking to the myelin agent failed", other.to_string()),
    }
}

fn add(env: &HashMap<String, String>, conf: &NetConf, client: &myelin_api::Client) -> Result<Value, CniError> {
    let container_id = require(env, "CNI_CONTAINERID")?;
    let netns = require(env, "CNI_NETNS")?;
    let ifname = require(env, "CNI_IFNAME")?;
    if !std::path::Path::new(netns).exists() {
        return Err(CniError::new(
            E_CONTAINER_UNKNOWN,
            format!("network namespace {netns} does not exist"),
            "the container's netns must exist during ADD",
        ));
    }
    let args = parse_args(env.get("CNI_ARGS").map(String::as_str).unwrap_or(""))?;
    let labels = labels_from_args(conf.args.as_ref())?;
    let pod_name = args.get("K8S_POD_NAME").cloned();
    // A Kubernetes pod (the kubelet passes K8S_POD_UID) whose labels the
    // runtime did not pass: the orchestrator sets them later, and until then
    // the endpoint is `init` (no unenforced window). A plain container (podman
    // passes a K8S_POD_NAME but no uid) has the labels it was given.
    let labels_pending = labels.is_none() && args.contains_key("K8S_POD_UID");
    let req = EndpointAddRequest {
        container_id: container_id.to_owned(),
        netns: netns.to_owned(),
        ifname: ifname.to_owned(),
        namespace: args.get("K8S_POD_NAMESPACE").cloned(),
        pod_name,
        labels: labels.unwrap_or_default(),
        ports: Vec::new(),
        labels_pending,
    };
    let ep: Endpoint = client.post("/v1/endpoints", &req).map_err(agent_error)?;
    Ok(result_json(&conf.cni_version, &ep))
}

/// The ADD result in the format of the requested version.
pub fn result_json(version: &str, ep: &Endpoint) -> Value {
    let legacy = version.starts_with("0.");
    let mut ip = json!({"address": format!("{}/32", ep.ipv4), "gateway": ep.gateway, "interface": 1});
    if legacy {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": ep.host_ifname, "mac": ep.host_mac},
            {"name": ep.ifname, "mac": ep.mac, "sandbox": ep.netns},
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": ep.gateway}],
        "dns": {},
    })
}

fn path_seg(s: &str) -> String {
    // Container ids and interface names are validated by the agent; escape
    // the characters that would change the route.
    s.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('#', "%23").replace(' ', "%20")
}

fn del(env: &HashMap<String, String>, client: &myelin_api::Client) -> Result<(), CniError> {
    let container_id = require(env, "CNI_CONTAINERID")?;
    let ifname = require(env, "CNI_IFNAME")?;
    let _: Deleted = client
        .delete(&format!("/v1/endpoints/by-container/{}/{}", path_seg(container_id), path_seg(ifname)))
        .map_err(agent_error)?;
    Ok(())
}

fn check(env: &HashMap<String, String>, conf: &NetConf, client: &myelin_api::Client) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            E_INCOMPATIBLE_VERSION,
            "CHECK needs cniVersion 0.4.0 or later",
            conf.cni_version.clone(),
        ));
    }
    let container_id = require(env, "CNI_CONTAINERID")?;
    let ifname = require(env, "CNI_IFNAME")?;
    require(env, "CNI_NETNS")?;
    let ep: Endpoint = client
        .post(&format!("/v1/endpoints/by-container/{}/{}/check", path_seg(container_id), path_seg(ifname)), &json!({}))
        .map_err(agent_error)?;
    // The previous result must still describe the endpoint.
    if let Some(prev) = &conf.prev_result {
        let want = format!("{}/32", ep.ipv4);
        let has = prev
            .get("ips")
            .and_then(Value::as_array)
            .is_some_and(|ips| ips.iter().any(|i| i.get("address").and_then(Value::as_str) == Some(want.as_str())));
        if !has {
            return Err(CniError::new(
                E_AGENT_REJECTED,
                format!("prevResult does not carry the endpoint's address {want}"),
                "the endpoint changed since ADD",
            ));
        }
    }
    Ok(())
}

fn status(client: &myelin_api::Client) -> Result<(), CniError> {
    match client.get::<Status>("/v1/status") {
        Ok(s) if s.healthy => Ok(()),
        Ok(_) => {
            Err(CniError::new(E_PLUGIN_NOT_AVAILABLE, "the myelin agent reports unhealthy", "see `myelin status`"))
        }
        Err(e) => Err(CniError::new(E_PLUGIN_NOT_AVAILABLE, "the myelin agent is unreachable", e.to_string())),
    }
}

/// The key under which a GC config lists the attachments the runtime still has.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// One entry of [`VALID_ATTACHMENTS`].
#[derive(Debug, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The valid attachments of a GC config. A missing list is an error, not "nothing is valid":
/// a runtime that forgot it would otherwise have every endpoint deleted. `[]` does mean
/// "nothing is valid".
pub fn valid_attachments(stdin: &[u8]) -> Result<Vec<Attachment>, CniError> {
    let v: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::new(E_DECODE, "cannot decode the GC config", e.to_string()))?;
    let Some(list) = v.get(VALID_ATTACHMENTS) else {
        return Err(CniError::new(
            E_INVALID_CONFIG,
            format!("GC config: {VALID_ATTACHMENTS} is missing"),
            format!(
                "the runtime must send {VALID_ATTACHMENTS}: the list of attachments still in use, \
                 [{{\"containerID\": ..., \"ifname\": ...}}, ...] ([] when none is); nothing was deleted"
            ),
        ));
    };
    serde_json::from_value(list.clone()).map_err(|e| {
        CniError::new(
            E_DECODE,
            format!("GC config: {VALID_ATTACHMENTS} is malformed"),
            format!("{e}: expected a list of {{\"containerID\": string, \"ifname\": string}}; nothing was deleted"),
        )
    })
}

/// GC (CNI 1.1): delete every endpoint that is not among the valid attachments.
fn gc(stdin: &[u8], client: &myelin_api::Client) -> Result<(), CniError> {
    let valid = valid_attachments(stdin)?;
    let eps: Vec<Endpoint> = client.get("/v1/endpoints").map_err(agent_error)?;
    for ep in eps {
        if !valid.iter().any(|a| a.container_id == ep.container_id && a.ifname == ep.ifname) {
            let _: Deleted = client
                .delete(&format!("/v1/endpoints/by-container/{}/{}", path_seg(&ep.container_id), path_seg(&ep.ifname)))
                .map_err(agent_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn conf_labels(conf: &Value) -> Result<Labels, CniError> {
        labels_from_args(conf.get("args")).map(Option::unwrap_or_default)
    }

    fn err_of(out: &str) -> Value {
        serde_json::from_str(out).unwrap()
    }

    #[test]
    fn version_lists_supported_versions() {
        let (out, code) = run(&env(&[("CNI_COMMAND", "VERSION")]), b"{\"cniVersion\":\"1.0.0\"}");
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v["supportedVersions"].as_array().unwrap().iter().any(|x| x == "1.0.0"));
    }

    #[test]
    fn malformed_config_is_a_decode_error() {
        let (out, code) = run(&env(&[("CNI_COMMAND", "ADD")]), b"{not json");
        assert_eq!(code, 1);
        assert_eq!(err_of(&out)["code"], 6);
        let (out, _) = run(&env(&[("CNI_COMMAND", "ADD")]), br#"{"cniVersion":"1.0.0","name":3,"type":"myelin-cni"}"#);
        assert_eq!(err_of(&out)["code"], 6);
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let (out, code) =
            run(&env(&[("CNI_COMMAND", "ADD")]), br#"{"cniVersion":"9.9.9","name":"n","type":"myelin-cni"}"#);
        assert_eq!(code, 1);
        let e = err_of(&out);
        assert_eq!(e["code"], 1);
        assert!(e["msg"].as_str().unwrap().contains("9.9.9"));
    }

    #[test]
    fn missing_env_is_code_4_and_unknown_command_too() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"myelin-cni","agentSocket":"/nonexistent/sock"}"#;
        let (out, _) = run(&env(&[("CNI_COMMAND", "ADD")]), conf);
        assert_eq!(err_of(&out)["code"], 4);
        let (out, _) = run(&env(&[("CNI_COMMAND", "FROB")]), conf);
        assert_eq!(err_of(&out)["code"], 4);
    }

    #[test]
    fn missing_netns_is_code_3() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"myelin-cni","agentSocket":"/nonexistent/sock"}"#;
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/nonexistent/netns"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let (out, _) = run(&e, conf);
        assert_eq!(err_of(&out)["code"], 3);
    }

    #[test]
    fn unreachable_agent_is_try_again_later() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"myelin-cni","agentSocket":"/nonexistent/sock"}"#;
        let e = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]);
        let (out, code) = run(&e, conf);
        assert_eq!(code, 1);
        assert_eq!(err_of(&out)["code"], 11);
    }

    #[test]
    fn relative_agent_socket_is_invalid_config() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"myelin-cni","agentSocket":"agent.sock"}"#;
        let (out, _) = run(&env(&[("CNI_COMMAND", "DEL")]), conf);
        assert_eq!(err_of(&out)["code"], 7);
    }

    #[test]
    fn gc_without_valid_attachments_is_invalid_config_and_touches_nothing() {
        // The agent socket does not exist: reaching for the agent would be code 11. A GC without
        // the list must be refused before the agent is asked for anything.
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"myelin-cni","agentSocket":"/nonexistent/sock"}"#;
        let (out, code) = run(&env(&[("CNI_COMMAND", "GC")]), conf);
        assert_eq!(code, 1, "{out}");
        let e = err_of(&out);
        assert_eq!(e["code"], 7, "{out}");
        let text = format!("{} {}", e["msg"], e["details"]);
        assert!(text.contains("cni.dev/valid-attachments"), "names the field: {out}");
        assert!(text.contains("containerID") && text.contains("ifname"), "says what to send: {out}");
    }

    #[test]
    fn gc_with_an_empty_list_means_nothing_is_valid_and_asks_the_agent() {
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"myelin-cni","agentSocket":"/nonexistent/sock",
                        "cni.dev/valid-attachments":[]}"#;
        let (out, _) = run(&env(&[("CNI_COMMAND", "GC")]), conf);
        assert_eq!(err_of(&out)["code"], 11, "an empty list is valid: the agent is asked (unreachable here): {out}");
    }

    #[test]
    fn gc_with_a_malformed_list_is_a_decode_error_naming_the_field() {
        for list in
            [r#"null"#, r#"{"containerID":"a"}"#, r#"[{"containerID":"a"}]"#, r#"[{"containerID":1,"ifname":"eth0"}]"#]
        {
            let conf = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"myelin-cni","agentSocket":"/nonexistent/sock","cni.dev/valid-attachments":{list}}}"#
            );
            let (out, _) = run(&env(&[("CNI_COMMAND", "GC")]), conf.as_bytes());
            let e = err_of(&out);
            assert_eq!(e["code"], 6, "{list}: {out}");
            assert!(out.contains("cni.dev/valid-attachments"), "{list}: {out}");
        }
    }

    #[test]
    fn labels_come_from_args_cni_labels() {
        let conf: Value = serde_json::from_str(
            r#"{"args": {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": ""}]}}}"#,
        )
        .unwrap();
        let labels = conf_labels(&conf).unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["app"], "web");
        assert_eq!(labels["tier"], "");
        assert!(conf_labels(&json!({})).unwrap().is_empty(), "no args: no labels");
        assert!(conf_labels(&json!({"args": {"cni": {}}})).unwrap().is_empty());
        assert!(conf_labels(&json!({"args": {"other": 1}})).unwrap().is_empty(), "other args are the runtime's");
    }

    #[test]
    fn malformed_labels_are_invalid_config_naming_the_entry() {
        let cases = [
            (json!({"args": {"cni": {"labels": {"app": "web"}}}}), "args.cni.labels"),
            (
                json!({"args": {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier"}]}}}),
                "args.cni.labels[1]",
            ),
            (json!({"args": {"cni": {"labels": [{"key": 3, "value": "web"}]}}}), "args.cni.labels[0]"),
            (json!({"args": {"cni": {"labels": [{"key": "a", "value": true}]}}}), "args.cni.labels[0]"),
            (json!({"args": {"cni": {"labels": ["app=web"]}}}), "args.cni.labels[0]"),
            (
                json!({"args": {"cni": {"labels": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]}}}),
                "args.cni.labels[1]",
            ),
        ];
        for (conf, field) in cases {
            let e = conf_labels(&conf).expect_err(&conf.to_string());
            assert_eq!(e.code, E_INVALID_CONFIG, "{conf}");
            assert!(e.msg.starts_with(field), "{conf}: {} does not name {field}", e.msg);
        }
        // Through the whole plugin: an ADD with bad labels fails before the agent is asked.
        let stdin = br#"{"cniVersion":"1.0.0","name":"n","type":"myelin-cni","agentSocket":"/nonexistent/sock",
                         "args":{"cni":{"labels":[{"key":"app"}]}}}"#;
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/"), ("CNI_IFNAME", "eth0")]);
        let (out, _) = run(&e, stdin);
        assert_eq!(err_of(&out)["code"], 7, "{out}");
        assert!(out.contains("args.cni.labels[0]"), "{out}");
    }

    #[test]
    fn cni_args_parse() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a").unwrap();
        assert_eq!(a["K8S_POD_NAME"], "a");
        assert!(parse_args("oops").is_err());
    }

    #[test]
    fn result_formats_follow_the_version() {
        let ep = Endpoint {
            id: 1,
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            host_ifname: "lxc0".into(),
            host_ifindex: 5,
            ipv4: "10.0.0.2".into(),
            gateway: "10.0.0.1".into(),
            mac: "aa:aa:aa:aa:aa:aa".into(),
            host_mac: "bb:bb:bb:bb:bb:bb".into(),
            namespace: None,
            pod_name: None,
            labels: Default::default(),
            ports: vec![],
            identity: 0,
            created: 0,
            labels_pending: false,
        };
        let v = result_json("1.0.0", &ep);
        assert_eq!(v["ips"][0]["address"], "10.0.0.2/32");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["interfaces"][1]["sandbox"], "/n");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(result_json("0.4.0", &ep)["ips"][0]["version"], "4");
    }
}
