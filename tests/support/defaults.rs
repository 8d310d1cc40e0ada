//! What a Kubernetes 1.28 API server stores for an object it is sent, for the port double: the
//! kind's defaults (`pkg/apis/apps/v1/defaults.go`, `pkg/apis/core/v1/defaults.go` and the
//! generated defaulters that call them), what the Service registry allocates (cluster IPs, IP
//! families, node ports), resource quantities in canonical form, and Go's JSON encoding leaving
//! out the empty value of an `omitempty` field. Applied to the JSON of an object before the
//! double stores it, so that the operator compares what it wants with what a real API server
//! hands back, never with the very object it sent. The object's system metadata (uid,
//! resourceVersion, generation, timestamps) is the caller's: `State::admit` in `mod.rs`.
//!
//! Left out, because the operator never sends them: the defaults of iSCSI, RBD, ScaleIO and
//! Azure disk volumes, host ports of `hostNetwork` pods, and dual-stack clusters (every
//! Service here is IPv4 single-stack, as on a default kind or kubeadm cluster).

use serde_json::{Map, Value, json};

/// Cluster IPs and node ports the Service registry hands out, in order.
#[derive(Clone, Debug)]
pub struct Allocator {
    next_ip: u32,
    next_node_port: i64,
}

impl Default for Allocator {
    fn default() -> Self {
        // 10.96.0.1 is the `kubernetes` Service and 10.96.0.10 the cluster DNS.
        Self { next_ip: 20, next_node_port: 30000 }
    }
}

impl Allocator {
    fn cluster_ip(&mut self) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        format!("10.96.{}.{}", n / 250, n % 250 + 1)
    }

    fn node_port(&mut self) -> i64 {
        let port = self.next_node_port;
        self.next_node_port += 1;
        port
    }
}

/// apps/v1 Deployment: `SetObjectDefaults_Deployment`.
pub fn deployment(object: &mut Value) {
    omit_empty(object);
    let spec = entry(object, "spec");
    default_pointer(spec, "replicas", json!(1));
    // `strategy` is a struct, not a pointer: always there once defaulted.
    let strategy = entry(spec, "strategy");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        let rolling = entry(strategy, "rollingUpdate");
        default_pointer(rolling, "maxUnavailable", json!("25%"));
        default_pointer(rolling, "maxSurge", json!("25%"));
    }
    default_pointer(spec, "revisionHistoryLimit", json!(10));
    default_pointer(spec, "progressDeadlineSeconds", json!(600));
    pod_spec(entry(entry(spec, "template"), "spec"));
}

/// v1 Pod, as a ReplicaSet (or a test playing one) creates it: `SetObjectDefaults_Pod`, which
/// adds to the pod template's defaults requests equal to the limits where none are set, and
/// service links.
pub fn pod(object: &mut Value) {
    omit_empty(object);
    let spec = entry(object, "spec");
    for list in ["containers", "initContainers"] {
        for container in items(spec, list) {
            let resources = entry(container, "resources");
            let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else { continue };
            let requests = entry(resources, "requests").as_object_mut().expect("requests is a map");
            for (resource, quantity) in limits {
                requests.entry(resource).or_insert(quantity);
            }
        }
    }
    default_pointer(spec, "enableServiceLinks", json!(true));
    pod_spec(spec);
}

/// v1 Service: `SetObjectDefaults_Service`, then the registry's allocations (`initIPFamilyFields`,
/// `allocateClusterIPs`, `allocateNodePorts`, and on an update `patchAllocatedValues`, which
/// keeps what was allocated before when the object sent leaves it out).
pub fn service(object: &mut Value, existing: Option<&Value>, allocator: &mut Allocator) {
    omit_empty(object);
    let before = existing.and_then(|e| e.get("spec"));
    let spec = entry(object, "spec");
    default(spec, "sessionAffinity", json!("None"));
    match spec["sessionAffinity"].as_str() {
        Some("None") => {
            map(spec).remove("sessionAffinityConfig");
        }
        Some("ClientIP") if spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds").is_none() => {
            map(spec).insert("sessionAffinityConfig".into(), json!({"clientIP": {"timeoutSeconds": 10800}}));
        }
        _ => {}
    }
    default(spec, "type", json!("ClusterIP"));
    let type_ = spec["type"].as_str().unwrap_or_default().to_string();
    for port in items(spec, "ports") {
        default(port, "protocol", json!("TCP"));
        if unset(port, "targetPort") {
            let number = port["port"].clone();
            map(port).insert("targetPort".into(), number);
        }
    }
    let node_ports = type_ == "NodePort" || type_ == "LoadBalancer";
    if node_ports {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if node_ports || type_ == "ClusterIP" {
        default_pointer(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if type_ == "LoadBalancer" {
        default_pointer(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if type_ == "ExternalName" {
        return;
    }

    // What the registry allocated before stays, unless the object sent says otherwise.
    if let Some(before) = before {
        for field in ["clusterIP", "clusterIPs", "ipFamilyPolicy", "ipFamilies"] {
            if unset(spec, field)
                && let Some(value) = before.get(field)
            {
                map(spec).insert(field.into(), value.clone());
            }
        }
    }
    let headless = spec["clusterIP"] == "None";
    if headless {
        default(spec, "clusterIPs", json!(["None"]));
    } else if unset(spec, "clusterIP") {
        let ip = allocator.cluster_ip();
        map(spec).insert("clusterIP".into(), json!(ip));
        map(spec).insert("clusterIPs".into(), json!([ip]));
    } else {
        let ip = spec["clusterIP"].clone();
        default(spec, "clusterIPs", json!([ip]));
    }
    let selectorless = spec.get("selector").and_then(Value::as_object).is_none_or(Map::is_empty);
    let policy = if headless && selectorless { "RequireDualStack" } else { "SingleStack" };
    default_pointer(spec, "ipFamilyPolicy", json!(policy));
    default(spec, "ipFamilies", json!(["IPv4"]));

    let allocates_node_ports =
        type_ == "NodePort" || (type_ == "LoadBalancer" && spec["allocateLoadBalancerNodePorts"] == true);
    if allocates_node_ports {
        // A port keeps the node port it had under its name, unless another port now claims it.
        let had: Vec<(Value, Value)> = before
            .and_then(|b| b.get("ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                (p.get("name").cloned().unwrap_or(json!("")), p.get("nodePort").cloned().unwrap_or(json!(0)))
            })
            .collect();
        let claimed: Vec<Value> =
            items(spec, "ports").filter_map(|p| p.get("nodePort").cloned()).filter(|n| *n != 0).collect();
        for port in items(spec, "ports") {
            if !unset(port, "nodePort") {
                continue;
            }
            let name = port.get("name").cloned().unwrap_or(json!(""));
            let kept = had
                .iter()
                .find(|(n, p)| *n == name && *p != 0 && !claimed.contains(p))
                .map(|(_, p)| p.clone());
            let node_port = kept.unwrap_or_else(|| json!(allocator.node_port()));
            map(port).insert("nodePort".into(), node_port);
        }
    }
}

/// Kinds without defaults (ConfigMap, policy/v1 PodDisruptionBudget: `unhealthyPodEvictionPolicy`
/// is not defaulted in 1.28): only what Go's encoding leaves out.
pub fn plain(object: &mut Value) {
    omit_empty(object);
}

/// The status a kind is created with (the registries' `PrepareForCreate` clear whatever was
/// sent), as Go encodes it; `None` for kinds without status.
pub fn created_status(kind: &str) -> Option<Value> {
    match kind {
        "Deployment" => Some(json!({})),
        "Service" => Some(json!({"loadBalancer": {}})),
        "PodDisruptionBudget" => Some(
            json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}),
        ),
        _ => None,
    }
}

/// `SetDefaults_PodSpec` and the defaulters of everything in a pod spec.
fn pod_spec(spec: &mut Value) {
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "restartPolicy", json!("Always"));
    default_pointer(spec, "securityContext", json!({}));
    default_pointer(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "schedulerName", json!("default-scheduler"));
    for volume in items(spec, "volumes") {
        volume_defaults(volume);
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items(spec, list) {
            container(c);
        }
    }
    resource_list(spec.get_mut("overhead"));
}

fn volume_defaults(volume: &mut Value) {
    // A volume that names no source is an emptyDir (`SetDefaults_Volume`).
    if map(volume).keys().all(|k| k == "name") {
        map(volume).insert("emptyDir".into(), json!({}));
    }
    if let Some(host_path) = volume.get_mut("hostPath") {
        default_pointer(host_path, "type", json!(""));
    }
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(source) = volume.get_mut(source) {
            default_pointer(source, "defaultMode", json!(420)); // 0644
        }
    }
    if let Some(downward) = volume.get_mut("downwardAPI") {
        for item in items(downward, "items") {
            field_ref(item.get_mut("fieldRef"));
        }
    }
    if let Some(projected) = volume.get_mut("projected") {
        for source in items(projected, "sources") {
            if let Some(downward) = source.get_mut("downwardAPI") {
                for item in items(downward, "items") {
                    field_ref(item.get_mut("fieldRef"));
                }
            }
            if let Some(token) = source.get_mut("serviceAccountToken") {
                default_pointer(token, "expirationSeconds", json!(3600));
            }
        }
    }
    if let Some(claim) = volume.pointer_mut("/ephemeral/volumeClaimTemplate/spec") {
        default_pointer(claim, "volumeMode", json!("Filesystem"));
        resource_list(claim.pointer_mut("/resources/limits"));
        resource_list(claim.pointer_mut("/resources/requests"));
    }
}

/// `SetDefaults_Container` and the defaults of its ports, env, resources, probes and hooks.
fn container(c: &mut Value) {
    if unset(c, "imagePullPolicy") {
        let policy = if image_tag(c["image"].as_str().unwrap_or_default()) == "latest" {
            "Always"
        } else {
            "IfNotPresent"
        };
        map(c).insert("imagePullPolicy".into(), json!(policy));
    }
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    for port in items(c, "ports") {
        default(port, "protocol", json!("TCP"));
    }
    for env in items(c, "env") {
        field_ref(env.pointer_mut("/valueFrom/fieldRef"));
        if let Some(divisor) = env.pointer_mut("/valueFrom/resourceFieldRef/divisor") {
            canonicalize(divisor, false);
        }
    }
    // `resources` is a struct, not a pointer: Go always encodes it, `{}` when empty.
    let resources = entry(c, "resources");
    resource_list(resources.get_mut("limits"));
    resource_list(resources.get_mut("requests"));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let Some(probe) = c.get_mut(probe) else { continue };
        default(probe, "timeoutSeconds", json!(1));
        default(probe, "periodSeconds", json!(10));
        default(probe, "successThreshold", json!(1));
        default(probe, "failureThreshold", json!(3));
        http_get(probe.get_mut("httpGet"));
        if let Some(grpc) = probe.get_mut("grpc") {
            default_pointer(grpc, "service", json!(""));
        }
    }
    for hook in ["postStart", "preStop"] {
        http_get(c.get_mut("lifecycle").and_then(|l| l.get_mut(hook)).and_then(|h| h.get_mut("httpGet")));
    }
}

fn http_get(action: Option<&mut Value>) {
    if let Some(action) = action {
        default(action, "path", json!("/"));
        default(action, "scheme", json!("HTTP"));
    }
}

fn field_ref(selector: Option<&mut Value>) {
    if let Some(selector) = selector {
        default(selector, "apiVersion", json!("v1"));
    }
}

/// The tag `ParseImageName` reads, `latest` when the image names neither a tag nor a digest.
fn image_tag(image: &str) -> &str {
    if image.is_empty() {
        return ""; // not an image name: no tag
    }
    let (name, digest) = image.split_once('@').map_or((image, None), |(n, d)| (n, Some(d)));
    // A colon before the last slash is a registry's port, not a tag.
    let last = name.rsplit('/').next().unwrap_or(name);
    match (last.split_once(':'), digest) {
        (Some((_, tag)), _) => tag,
        (None, Some(_)) => "",
        (None, None) => "latest",
    }
}

/// `SetDefaults_ResourceList`: every quantity rounded up to milli-units, then encoded in its
/// canonical form.
fn resource_list(list: Option<&mut Value>) {
    if let Some(Value::Object(list)) = list {
        for quantity in list.values_mut() {
            canonicalize(quantity, true);
        }
    }
}

fn canonicalize(quantity: &mut Value, milli: bool) {
    let text = match quantity {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return,
    };
    // What does not parse the API server refuses (422); the operator validates quantities first.
    if let Some(canonical) = canonical_quantity(&text, milli) {
        *quantity = json!(canonical);
    }
}

/// How a quantity was written, which decides how it is printed back (`resource.Format`).
#[derive(Clone, Copy, PartialEq)]
enum Format {
    BinarySI,
    DecimalSI,
    DecimalExponent,
}

/// A quantity as the API server prints it back (`Quantity.String()` after `ParseQuantity`):
/// `0.5` → `500m`, `1000M` → `1G`, `1024Mi` → `1Gi`, `1e3` stays `1e3`. A number without a suffix
/// is decimal, so `1073741824` stays `1073741824` (only `1024Mi` and the like become `1Gi`).
/// `milli`: rounded up to milli-units first, as resource lists are (`SetDefaults_ResourceList`);
/// otherwise to nano-units, as parsing does. `None` when it is not a quantity.
pub fn canonical_quantity(text: &str, milli: bool) -> Option<String> {
    let (nanos, format) = parse_quantity(text)?;
    let unit: i128 = if milli { 1_000_000 } else { 1 };
    // Away from zero, as inf.RoundUp does.
    let magnitude = (nanos.abs() + unit - 1) / unit * unit;
    if magnitude == 0 {
        return Some("0".into());
    }
    let sign = if nanos < 0 { "-" } else { "" };
    const NANOS_PER_UNIT: i128 = 1_000_000_000;
    // A binary quantity below 1024 or with a fraction is printed as a decimal one.
    let binary =
        format == Format::BinarySI && magnitude >= 1024 * NANOS_PER_UNIT && magnitude % NANOS_PER_UNIT == 0;
    if binary {
        let (mut amount, mut power) = (magnitude / NANOS_PER_UNIT, 0);
        while amount % 1024 == 0 && power < 6 {
            amount /= 1024;
            power += 1;
        }
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
        return Some(format!("{sign}{amount}{suffix}"));
    }
    // Decimal: the largest exponent that is a multiple of 3 with a whole mantissa.
    let (mut amount, mut exponent) = (magnitude, -9i32);
    while amount % 1000 == 0 && exponent < 18 {
        amount /= 1000;
        exponent += 3;
    }
    let suffix = match (format, exponent) {
        (Format::DecimalExponent, 0) => String::new(),
        (Format::DecimalExponent, e) => format!("e{e}"),
        (_, e) => ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"][((e + 9) / 3) as usize].to_string(),
    };
    Some(format!("{sign}{amount}{suffix}"))
}

/// `ParseQuantity`: the value in nano-units (rounded up, away from zero) and its format.
fn parse_quantity(text: &str) -> Option<(i128, Format)> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let (format, binary_shift, exponent) = match suffix {
        "" => (Format::DecimalSI, 0, 0),
        "n" => (Format::DecimalSI, 0, -9),
        "u" => (Format::DecimalSI, 0, -6),
        "m" => (Format::DecimalSI, 0, -3),
        "k" => (Format::DecimalSI, 0, 3),
        "M" => (Format::DecimalSI, 0, 6),
        "G" => (Format::DecimalSI, 0, 9),
        "T" => (Format::DecimalSI, 0, 12),
        "P" => (Format::DecimalSI, 0, 15),
        "E" => (Format::DecimalSI, 0, 18),
        "Ki" => (Format::BinarySI, 10, 0),
        "Mi" => (Format::BinarySI, 20, 0),
        "Gi" => (Format::BinarySI, 30, 0),
        "Ti" => (Format::BinarySI, 40, 0),
        "Pi" => (Format::BinarySI, 50, 0),
        "Ei" => (Format::BinarySI, 60, 0),
        e if e.len() > 1 && e.starts_with(['e', 'E']) => {
            (Format::DecimalExponent, 0, e[1..].parse::<i32>().ok()?)
        }
        _ => return None,
    };
    // digits / 10^scale * 2^shift * 10^exponent, in nano-units.
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let value = digits.checked_mul(1i128 << binary_shift)?;
    let power = exponent + 9 - fraction.len() as i32;
    let nanos = if power >= 0 {
        value.checked_mul(10i128.checked_pow(power as u32)?)?
    } else {
        let divisor = 10i128.checked_pow((-power) as u32)?;
        (value + divisor - 1) / divisor
    };
    Some((if negative { -nanos } else { nanos }, format))
}

/// Fields whose JSON object is a Go map (its keys are data; an empty one is left out) rather
/// than a struct (encoded even when empty, e.g. `emptyDir: {}`).
const MAP_FIELDS: [&str; 9] = [
    "labels",
    "annotations",
    "matchLabels",
    "nodeSelector",
    "data",
    "binaryData",
    "limits",
    "requests",
    "overhead",
];
/// `*string` fields, which keep an empty string (the rest of the strings a client can leave empty
/// are `omitempty`: those that are not are required and refused empty).
const POINTER_STRINGS: [&str; 5] = ["type", "service", "storageClassName", "appProtocol", "volumeMode"];
/// Non-pointer `bool` fields with `omitempty`, left out when false.
const VALUE_BOOLS: [&str; 9] = [
    "readOnly",
    "stdin",
    "stdinOnce",
    "tty",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "publishNotReadyAddresses",
    "paused",
];
/// Non-pointer `int32` fields with `omitempty`, left out when 0.
const VALUE_INTS: [&str; 5] =
    ["hostPort", "nodePort", "initialDelaySeconds", "minReadySeconds", "healthCheckNodePort"];

/// Go's `encoding/json` leaves out an `omitempty` field holding its zero value: empty strings,
/// lists and maps, and `false` and `0` in non-pointer fields. Pointer fields (`*bool`, `*int32`:
/// `allowPrivilegeEscalation: false`, `maxUnavailable: 0`) keep theirs.
fn omit_empty(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.retain(|key, v| !zero_of_omitempty(key, v));
            for (key, v) in fields.iter_mut() {
                if !is_map(key, v) {
                    omit_empty(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(omit_empty),
        _ => {}
    }
}

fn zero_of_omitempty(key: &str, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty() && !POINTER_STRINGS.contains(&key),
        Value::Bool(b) => !b && VALUE_BOOLS.contains(&key),
        Value::Number(n) => n.as_i64() == Some(0) && VALUE_INTS.contains(&key),
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty() && is_map(key, value),
    }
}

/// A Service's `selector` is a map; a Deployment's or a budget's is a `LabelSelector` struct.
fn is_map(key: &str, value: &Value) -> bool {
    MAP_FIELDS.contains(&key)
        || (key == "selector"
            && value.as_object().is_some_and(|s| {
                !s.contains_key("matchLabels") && !s.contains_key("matchExpressions") && !s.is_empty()
            }))
}

/// Whether a Go defaulter takes `key` as unset: absent, or the zero value of a non-pointer field
/// (an empty string, 0).
fn unset(object: &Value, key: &str) -> bool {
    match object.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(_) => false,
    }
}

/// Sets a non-pointer field the object leaves unset (absent, empty or 0).
fn default(object: &mut Value, key: &str, value: Value) {
    if unset(object, key) {
        map(object).insert(key.into(), value);
    }
}

/// Sets a pointer field the object leaves out (`nil`; a zero value is a value).
fn default_pointer(object: &mut Value, key: &str, value: Value) {
    if object.get(key).is_none_or(Value::is_null) {
        map(object).insert(key.into(), value);
    }
}

fn map(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    object.as_object_mut().unwrap()
}

/// The object under `key`, created empty when absent.
fn entry<'a>(object: &'a mut Value, key: &str) -> &'a mut Value {
    let field = map(object).entry(key).or_insert_with(|| json!({}));
    if field.is_null() {
        *field = json!({});
    }
    field
}

/// The elements of the list under `key`, if any.
fn items<'a>(object: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    object.get_mut(key).and_then(Value::as_array_mut).into_iter().flatten()
}
