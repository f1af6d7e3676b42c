//! Kafka rules: API key names, the `role` expansion, and request matching.

/// Kafka API keys by protocol name (lower case, no separators), from the Kafka protocol specification.
const API_KEYS: &[(&str, i16)] = &[
    ("produce", 0),
    ("fetch", 1),
    ("listoffsets", 2),
    ("offsets", 2),
    ("metadata", 3),
    ("leaderandisr", 4),
    ("stopreplica", 5),
    ("updatemetadata", 6),
    ("controlledshutdown", 7),
    ("offsetcommit", 8),
    ("offsetfetch", 9),
    ("findcoordinator", 10),
    ("joingroup", 11),
    ("heartbeat", 12),
    ("leavegroup", 13),
    ("syncgroup", 14),
    ("describegroups", 15),
    ("listgroups", 16),
    ("saslhandshake", 17),
    ("apiversions", 18),
    ("createtopics", 19),
    ("deletetopics", 20),
    ("deleterecords", 21),
    ("initproducerid", 22),
    ("offsetforleaderepoch", 23),
    ("addpartitionstotxn", 24),
    ("addoffsetstotxn", 25),
    ("endtxn", 26),
    ("writetxnmarkers", 27),
    ("txnoffsetcommit", 28),
    ("describeacls", 29),
    ("createacls", 30),
    ("deleteacls", 31),
    ("describeconfigs", 32),
    ("alterconfigs", 33),
    ("alterreplicalogdirs", 34),
    ("describelogdirs", 35),
    ("saslauthenticate", 36),
    ("createpartitions", 37),
    ("createdelegationtoken", 38),
    ("renewdelegationtoken", 39),
    ("expiredelegationtoken", 40),
    ("describedelegationtoken", 41),
    ("deletegroups", 42),
    ("electleaders", 43),
    ("incrementalalterconfigs", 44),
    ("alterpartitionreassignments", 45),
    ("listpartitionreassignments", 46),
    ("offsetdelete", 47),
    ("describeclientquotas", 48),
    ("alterclientquotas", 49),
    ("describeuserscramcredentials", 50),
    ("alteruserscramcredentials", 51),
    ("describeproducers", 61),
    ("describetransactions", 65),
    ("listtransactions", 66),
    ("consumergroupheartbeat", 68),
    ("consumergroupdescribe", 69),
    ("gettelemetrysubscriptions", 71),
    ("pushtelemetry", 72),
    ("describetopicpartitions", 75),
];

/// API keys allowed by `role: produce`.
pub const PRODUCE_KEYS: &[i16] = &[0, 3, 18];
/// API keys allowed by `role: consume`.
pub const CONSUME_KEYS: &[i16] = &[1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18];

/// Look up an API key by name, case-insensitively, ignoring `_` and `-` (`"Produce"`, `"list_offsets"`).
pub fn api_key_by_name(name: &str) -> Option<i16> {
    let norm: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    API_KEYS.iter().find(|(n, _)| *n == norm).map(|(_, k)| *k)
}

/// The canonical name of an API key, if known.
pub fn api_key_name(key: i16) -> Option<&'static str> {
    API_KEYS
        .iter()
        .find(|(n, k)| *k == key && *n != "offsets")
        .map(|(n, _)| *n)
}

/// Is `topic` a valid Kafka topic name (1..=255 chars of `[a-zA-Z0-9._-]`)? Returns the problem if not.
pub fn topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("topic must not be empty".into());
    }
    if topic.len() > 255 {
        return Some(format!(
            "topic is {} characters long; Kafka allows at most 255",
            topic.len()
        ));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "topic contains {c:?}; only [a-zA-Z0-9._-] is allowed"
        ));
    }
    None
}

/// One compiled Kafka rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRule {
    /// Allowed API keys; empty = any key.
    pub api_keys: Vec<i16>,
    pub api_version: Option<i16>,
    pub client_id: Option<String>,
    pub topic: Option<String>,
}

impl KafkaRule {
    /// Does the rule match the request header (key, version, client id), ignoring topics?
    pub fn matches_header(&self, api_key: i16, api_version: i16, client_id: Option<&str>) -> bool {
        (self.api_keys.is_empty() || self.api_keys.contains(&api_key))
            && self.api_version.is_none_or(|v| v == api_version)
            && self
                .client_id
                .as_deref()
                .is_none_or(|c| client_id == Some(c))
    }

    /// Does the rule allow this topic?
    pub fn allows_topic(&self, topic: &str) -> bool {
        self.topic.as_deref().is_none_or(|t| t == topic)
    }
}
