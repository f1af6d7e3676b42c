//! Responses the proxy writes itself, and the one response it rewrites.
//!
//! A denied request is never forwarded: the client gets a response of the same API key and version, with the same
//! correlation id, carrying an authorization error on every topic/partition the request named (or, for APIs
//! without a per-topic field, the API's closest authorization error: group, transactional id, cluster, ...). Real
//! clients then report "Topic authorization failed" instead of waiting for a response that never comes.
//!
//! Metadata responses are the one thing rewritten on the way back (see `filter_metadata`). Nothing else from the
//! broker is decoded: allowed traffic is forwarded byte for byte.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use thiserror::Error;

use super::request::KafkaRequest;

/// Kafka error codes the proxy answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub const DELEGATION_TOKEN_AUTHORIZATION_FAILED: i16 = 65;
    /// Sent for requests naming a topic id the proxy has not seen in a Metadata response: the client refreshes
    /// its metadata (through the proxy, which learns the id) and retries.
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}

/// Resource type 2 is TOPIC in DescribeConfigs / AlterConfigs / IncrementalAlterConfigs.
const RESOURCE_TOPIC: i8 = 2;

#[derive(Debug, Error)]
pub enum ResponseError {
    /// Broker-to-broker and share-group state APIs that carry no top-level error and whose per-item results the
    /// proxy does not build: the connection is closed instead (a client never sends these).
    #[error("no local error response for {0:?}: the proxy closes the connection instead")]
    NoLocalResponse(ApiKey),
    #[error("encoding the {key:?} v{version} response failed: {reason}")]
    Encode {
        key: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("malformed {key:?} v{version} response from the broker: {reason}")]
    Decode {
        key: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Whether the broker answers this request at all: Produce with `acks=0` gets no response.
pub fn expects_response(req: &KafkaRequest) -> bool {
    !matches!(&req.body, RequestKind::Produce(p) if p.acks == 0)
}

/// Sets the top-level `error_code` of a freshly defaulted response of this variant.
macro_rules! top_level {
    ($variant:ident, $code:expr) => {{
        let mut r = ResponseKind::$variant(Default::default());
        if let ResponseKind::$variant(x) = &mut r {
            x.error_code = $code;
        }
        r
    }};
}

/// The local error response to `req`: `topic_code` on every topic/partition it names (29
/// TOPIC_AUTHORIZATION_FAILED for a policy denial, 100 UNKNOWN_TOPIC_ID for an unseen topic id), the API's
/// closest authorization error where it has no per-topic field.
pub fn error_body(req: &KafkaRequest, topic_code: i16) -> Result<ResponseKind, ResponseError> {
    // One helper per response shape; each knows its keys and returns `None` for the rest.
    const BY_SHAPE: [fn(&KafkaRequest, i16) -> Option<ResponseKind>; 13] = [
        partition_errors_produce_fetch,
        partition_errors_offsets,
        partition_errors_admin,
        partition_errors_replicas,
        partition_errors_txn,
        offset_fetch_errors,
        topic_errors,
        resource_errors,
        group_list_errors,
        cluster_list_errors,
        cluster_partition_errors,
        top_level_group_txn_errors,
        top_level_cluster_errors,
    ];
    BY_SHAPE
        .iter()
        .find_map(|build| build(req, topic_code))
        .ok_or(ResponseError::NoLocalResponse(req.api_key))
}

/// The closest authorization error of a config resource: the topic's code for a topic, the cluster's otherwise.
fn resource_code(resource_type: i8, topic_code: i16) -> i16 {
    if resource_type == RESOURCE_TOPIC {
        topic_code
    } else {
        code::CLUSTER_AUTHORIZATION_FAILED
    }
}

/// Produce and Fetch: every partition named carries `topic_code`. `None` for other keys.
fn partition_errors_produce_fetch(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    Some(match &req.body {
        RequestKind::Produce(r) => ResponseKind::Produce(
            ProduceResponse::default().with_responses(
                r.topic_data
                    .iter()
                    .map(|t| {
                        produce_response::TopicProduceResponse::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_partition_responses(
                                t.partition_data
                                    .iter()
                                    .map(|p| {
                                        produce_response::PartitionProduceResponse::default()
                                            .with_index(p.index)
                                            .with_error_code(topic_code)
                                            .with_base_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::Fetch(r) => ResponseKind::Fetch(
            FetchResponse::default()
                .with_session_id(r.session_id)
                .with_responses(
                    r.topics
                        .iter()
                        .map(|t| {
                            fetch_response::FetchableTopicResponse::default()
                                .with_topic(t.topic.clone())
                                .with_topic_id(t.topic_id)
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            fetch_response::PartitionData::default()
                                                .with_partition_index(p.partition)
                                                .with_error_code(topic_code)
                                                .with_high_watermark(-1)
                                                .with_records(Some(Bytes::new()))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
        ),
        _ => return None,
    })
}

/// ListOffsets, OffsetCommit and DeleteRecords: every partition named carries `topic_code`. `None` for other keys.
fn partition_errors_offsets(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    Some(match &req.body {
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(
            ListOffsetsResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        list_offsets_response::ListOffsetsTopicResponse::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        list_offsets_response::ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        offset_commit_response::OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_commit_response::OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteRecords(r) => ResponseKind::DeleteRecords(
            DeleteRecordsResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        delete_records_response::DeleteRecordsTopicResult::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        delete_records_response::DeleteRecordsPartitionResult::default()
                                            .with_partition_index(p.partition_index)
                                            .with_low_watermark(-1)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// OffsetDelete and DescribeProducers: every partition named carries `topic_code`. `None` for other keys.
fn partition_errors_admin(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    Some(match &req.body {
        RequestKind::OffsetDelete(r) => ResponseKind::OffsetDelete(
            OffsetDeleteResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        offset_delete_response::OffsetDeleteResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_delete_response::OffsetDeleteResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::DescribeProducers(r) => ResponseKind::DescribeProducers(
            DescribeProducersResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        describe_producers_response::TopicResponse::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|&i| {
                                        describe_producers_response::PartitionResponse::default()
                                            .with_partition_index(i)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// OffsetForLeaderEpoch and AlterReplicaLogDirs: every partition named carries `topic_code`. `None` for other keys.
fn partition_errors_replicas(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    Some(match &req.body {
        RequestKind::OffsetForLeaderEpoch(r) => ResponseKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                            .with_topic(t.topic.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_for_leader_epoch_response::EpochEndOffset::default()
                                            .with_partition(p.partition)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::AlterReplicaLogDirs(r) => ResponseKind::AlterReplicaLogDirs(
            AlterReplicaLogDirsResponse::default().with_results(
                r.dirs
                    .iter()
                    .flat_map(|d| d.topics.iter())
                    .map(|t| {
                        alter_replica_log_dirs_response::AlterReplicaLogDirTopicResult::default()
                            .with_topic_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|&i| {
                                        alter_replica_log_dirs_response::AlterReplicaLogDirPartitionResult::default()
                                            .with_partition_index(i)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// TxnOffsetCommit and AddPartitionsToTxn: every partition named carries `topic_code`. `None` for other keys.
fn partition_errors_txn(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    Some(match &req.body {
        RequestKind::TxnOffsetCommit(r) => ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::AddPartitionsToTxn(r) => {
            let topic_results = |topics: &[add_partitions_to_txn_request::AddPartitionsToTxnTopic]| {
                topics
                    .iter()
                    .map(|t| {
                        add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                            .with_name(t.name.clone())
                            .with_results_by_partition(
                                t.partitions
                                    .iter()
                                    .map(|&i| {
                                        add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                            .with_partition_index(i)
                                            .with_partition_error_code(topic_code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect::<Vec<_>>()
            };
            ResponseKind::AddPartitionsToTxn(
                AddPartitionsToTxnResponse::default()
                    .with_results_by_topic_v3_and_below(topic_results(&r.v3_and_below_topics))
                    .with_results_by_transaction(
                        r.transactions
                            .iter()
                            .map(|t| {
                                add_partitions_to_txn_response::AddPartitionsToTxnResult::default()
                                    .with_transactional_id(t.transactional_id.clone())
                                    .with_topic_results(topic_results(&t.topics))
                            })
                            .collect(),
                    ),
            )
        }
        _ => return None,
    })
}

/// OffsetFetch: per partition before v8, per group (each with its partitions) from v8; a group naming no topic
/// gets GROUP_AUTHORIZATION_FAILED. `None` for other keys.
fn offset_fetch_errors(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    use code::{GROUP_AUTHORIZATION_FAILED, NONE};
    Some(match &req.body {
        RequestKind::OffsetFetch(r) if req.api_version < 8 => {
            let topics: Vec<_> = r
                .topics
                .iter()
                .flatten()
                .map(|t| {
                    offset_fetch_response::OffsetFetchResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .map(|&i| {
                                    offset_fetch_response::OffsetFetchResponsePartition::default()
                                        .with_partition_index(i)
                                        .with_committed_offset(-1)
                                        .with_error_code(topic_code)
                                })
                                .collect(),
                        )
                })
                .collect();
            // Without named topics the denial is about the GROUP_AUTHORIZATION_FAILED.
            let top = if topics.is_empty() && req.api_version >= 2 {
                GROUP_AUTHORIZATION_FAILED
            } else {
                NONE
            };
            ResponseKind::OffsetFetch(
                OffsetFetchResponse::default()
                    .with_topics(topics)
                    .with_error_code(top),
            )
        }
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(
            OffsetFetchResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        let topics: Vec<_> = g
                            .topics
                            .iter()
                            .flatten()
                            .map(|t| {
                                offset_fetch_response::OffsetFetchResponseTopics::default()
                                    .with_name(t.name.clone())
                                    .with_topic_id(t.topic_id)
                                    .with_partitions(
                                        t.partition_indexes
                                            .iter()
                                            .map(|&i| {
                                                offset_fetch_response::OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(i)
                                                    .with_committed_offset(-1)
                                                    .with_error_code(topic_code)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect();
                        let top = if topics.is_empty() { GROUP_AUTHORIZATION_FAILED } else { NONE };
                        offset_fetch_response::OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_topics(topics)
                            .with_error_code(top)
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// Metadata, CreateTopics, DeleteTopics, CreatePartitions and DescribeTopicPartitions: one result per topic,
/// carrying `topic_code`. `None` for other keys.
fn topic_errors(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    Some(match &req.body {
        RequestKind::Metadata(r) => ResponseKind::Metadata(
            MetadataResponse::default().with_topics(
                r.topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        metadata_response::MetadataResponseTopic::default()
                            .with_error_code(topic_code)
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                    })
                    .collect(),
            ),
        ),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(
            CreateTopicsResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        create_topics_response::CreatableTopicResult::default()
                            .with_name(t.name.clone())
                            .with_error_code(topic_code)
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(
            DeleteTopicsResponse::default().with_responses(
                r.topic_names
                    .iter()
                    .map(|n| {
                        delete_topics_response::DeletableTopicResult::default()
                            .with_name(Some(n.clone()))
                            .with_error_code(topic_code)
                    })
                    .chain(r.topics.iter().map(|t| {
                        delete_topics_response::DeletableTopicResult::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_error_code(topic_code)
                    }))
                    .collect(),
            ),
        ),
        RequestKind::CreatePartitions(r) => ResponseKind::CreatePartitions(
            CreatePartitionsResponse::default().with_results(
                r.topics
                    .iter()
                    .map(|t| {
                        create_partitions_response::CreatePartitionsTopicResult::default()
                            .with_name(t.name.clone())
                            .with_error_code(topic_code)
                    })
                    .collect(),
            ),
        ),
        RequestKind::DescribeTopicPartitions(r) => ResponseKind::DescribeTopicPartitions(
            DescribeTopicPartitionsResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                            .with_name(Some(t.name.clone()))
                            .with_error_code(topic_code)
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: one result per config resource (`resource_code`). `None` for other keys.
fn resource_errors(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    Some(match &req.body {
        RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(
            DescribeConfigsResponse::default().with_results(
                r.resources
                    .iter()
                    .map(|x| {
                        describe_configs_response::DescribeConfigsResult::default()
                            .with_resource_type(x.resource_type)
                            .with_resource_name(x.resource_name.clone())
                            .with_error_code(resource_code(x.resource_type, topic_code))
                    })
                    .collect(),
            ),
        ),
        RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(
            AlterConfigsResponse::default().with_responses(
                r.resources
                    .iter()
                    .map(|x| {
                        alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_resource_type(x.resource_type)
                            .with_resource_name(x.resource_name.clone())
                            .with_error_code(resource_code(x.resource_type, topic_code))
                    })
                    .collect(),
            ),
        ),
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsResponse::default().with_responses(
                r.resources
                    .iter()
                    .map(|x| {
                        incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_resource_type(x.resource_type)
                            .with_resource_name(x.resource_name.clone())
                            .with_error_code(resource_code(x.resource_type, topic_code))
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// DescribeGroups, DeleteGroups, ConsumerGroupDescribe, ShareGroupDescribe and FindCoordinator: one result per
/// group (or coordinator key). `None` for other keys.
fn group_list_errors(req: &KafkaRequest, _topic_code: i16) -> Option<ResponseKind> {
    use code::{GROUP_AUTHORIZATION_FAILED, TRANSACTIONAL_ID_AUTHORIZATION_FAILED};
    Some(match &req.body {
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        describe_groups_response::DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_error_code(GROUP_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(
            DeleteGroupsResponse::default().with_results(
                r.groups_names
                    .iter()
                    .map(|g| {
                        delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(g.clone())
                            .with_error_code(GROUP_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        RequestKind::ConsumerGroupDescribe(r) => ResponseKind::ConsumerGroupDescribe(
            ConsumerGroupDescribeResponse::default().with_groups(
                r.group_ids
                    .iter()
                    .map(|g| {
                        consumer_group_describe_response::DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_error_code(GROUP_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        RequestKind::ShareGroupDescribe(r) => ResponseKind::ShareGroupDescribe(
            ShareGroupDescribeResponse::default().with_groups(
                r.group_ids
                    .iter()
                    .map(|g| {
                        share_group_describe_response::DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_error_code(GROUP_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        RequestKind::FindCoordinator(r) => {
            // Key type 1 is a transactional id; 0 (and share groups) a GROUP_AUTHORIZATION_FAILED.
            let c = if r.key_type == 1 {
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            } else {
                GROUP_AUTHORIZATION_FAILED
            };
            let mut resp = FindCoordinatorResponse::default();
            if req.api_version < 4 {
                resp.error_code = c;
                resp.node_id = (-1).into();
                resp.port = -1;
            }
            resp.coordinators = r
                .coordinator_keys
                .iter()
                .map(|k| {
                    find_coordinator_response::Coordinator::default()
                        .with_key(k.clone())
                        .with_node_id((-1).into())
                        .with_port(-1)
                        .with_error_code(c)
                })
                .collect();
            ResponseKind::FindCoordinator(resp)
        }
        _ => return None,
    })
}

/// CreateAcls, DeleteAcls, AlterClientQuotas, AlterUserScramCredentials and DescribeTransactions: one result per
/// item, carrying the cluster's (or the transactional id's) code. `None` for other keys.
fn cluster_list_errors(req: &KafkaRequest, _topic_code: i16) -> Option<ResponseKind> {
    use code::{CLUSTER_AUTHORIZATION_FAILED, TRANSACTIONAL_ID_AUTHORIZATION_FAILED};
    Some(match &req.body {
        RequestKind::CreateAcls(r) => ResponseKind::CreateAcls(
            CreateAclsResponse::default().with_results(
                r.creations
                    .iter()
                    .map(|_| {
                        create_acls_response::AclCreationResult::default().with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteAcls(r) => ResponseKind::DeleteAcls(
            DeleteAclsResponse::default().with_filter_results(
                r.filters
                    .iter()
                    .map(|_| {
                        delete_acls_response::DeleteAclsFilterResult::default()
                            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        RequestKind::AlterClientQuotas(r) => ResponseKind::AlterClientQuotas(
            AlterClientQuotasResponse::default().with_entries(
                r.entries
                    .iter()
                    .map(|e| {
                        alter_client_quotas_response::EntryData::default()
                            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                            .with_entity(
                                e.entity
                                    .iter()
                                    .map(|x| {
                                        alter_client_quotas_response::EntityData::default()
                                            .with_entity_type(x.entity_type.clone())
                                            .with_entity_name(x.entity_name.clone())
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::AlterUserScramCredentials(r) => ResponseKind::AlterUserScramCredentials(
            AlterUserScramCredentialsResponse::default().with_results(
                r.deletions
                    .iter()
                    .map(|d| d.name.clone())
                    .chain(r.upsertions.iter().map(|u| u.name.clone()))
                    .map(|user: StrBytes| {
                        alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                            .with_user(user)
                            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        RequestKind::DescribeTransactions(r) => ResponseKind::DescribeTransactions(
            DescribeTransactionsResponse::default().with_transaction_states(
                r.transactional_ids
                    .iter()
                    .map(|t| {
                        describe_transactions_response::TransactionState::default()
                            .with_transactional_id(t.clone())
                            .with_error_code(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            ),
        ),
        _ => return None,
    })
}

/// WriteTxnMarkers and ElectLeaders: per-partition results of cluster operations. `None` for other keys.
fn cluster_partition_errors(req: &KafkaRequest, topic_code: i16) -> Option<ResponseKind> {
    use code::{CLUSTER_AUTHORIZATION_FAILED, NONE};
    Some(match &req.body {
        RequestKind::WriteTxnMarkers(r) => ResponseKind::WriteTxnMarkers(
            WriteTxnMarkersResponse::default().with_markers(
                r.markers
                    .iter()
                    .map(|m| {
                        write_txn_markers_response::WritableTxnMarkerResult::default()
                            .with_producer_id(m.producer_id)
                            .with_topics(
                                m.topics
                                    .iter()
                                    .map(|t| {
                                        write_txn_markers_response::WritableTxnMarkerTopicResult::default()
                                            .with_name(t.name.clone())
                                            .with_partitions(
                                                t.partition_indexes
                                                    .iter()
                                                    .map(|&i| {
                                                        write_txn_markers_response::WritableTxnMarkerPartitionResult::default()
                                                            .with_partition_index(i)
                                                            .with_error_code(CLUSTER_AUTHORIZATION_FAILED)
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::ElectLeaders(r) => ResponseKind::ElectLeaders(
            ElectLeadersResponse::default()
                .with_error_code(if req.api_version >= 1 {
                    CLUSTER_AUTHORIZATION_FAILED
                } else {
                    NONE
                })
                .with_replica_election_results(
                    r.topic_partitions
                        .iter()
                        .flatten()
                        .map(|t| {
                            elect_leaders_response::ReplicaElectionResult::default()
                                .with_topic(t.topic.clone())
                                .with_partition_result(
                                    t.partitions
                                        .iter()
                                        .map(|&p| {
                                            elect_leaders_response::PartitionResult::default()
                                                .with_partition_id(p)
                                                .with_error_code(topic_code)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
        ),
        _ => return None,
    })
}

/// APIs answered with one top-level code: group and share-group calls, transactions, SASL and delegation
/// tokens. `None` for other keys.
fn top_level_group_txn_errors(req: &KafkaRequest, _topic_code: i16) -> Option<ResponseKind> {
    use code::{
        CLUSTER_AUTHORIZATION_FAILED, DELEGATION_TOKEN_AUTHORIZATION_FAILED,
        GROUP_AUTHORIZATION_FAILED, SASL_AUTHENTICATION_FAILED,
        TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    };
    Some(match &req.body {
        RequestKind::InitProducerId(r) => {
            // Idempotent producers need the CLUSTER_AUTHORIZATION_FAILED's IDEMPOTENT_WRITE; transactional ones their transactional id.
            let c = if r.transactional_id.is_some() {
                TRANSACTIONAL_ID_AUTHORIZATION_FAILED
            } else {
                CLUSTER_AUTHORIZATION_FAILED
            };
            top_level!(InitProducerId, c)
        }
        RequestKind::JoinGroup(_) => top_level!(JoinGroup, GROUP_AUTHORIZATION_FAILED),
        RequestKind::Heartbeat(_) => top_level!(Heartbeat, GROUP_AUTHORIZATION_FAILED),
        RequestKind::LeaveGroup(_) => top_level!(LeaveGroup, GROUP_AUTHORIZATION_FAILED),
        RequestKind::SyncGroup(_) => top_level!(SyncGroup, GROUP_AUTHORIZATION_FAILED),
        RequestKind::ConsumerGroupHeartbeat(_) => {
            top_level!(ConsumerGroupHeartbeat, GROUP_AUTHORIZATION_FAILED)
        }
        RequestKind::ShareGroupHeartbeat(_) => {
            top_level!(ShareGroupHeartbeat, GROUP_AUTHORIZATION_FAILED)
        }
        RequestKind::ShareFetch(_) => top_level!(ShareFetch, GROUP_AUTHORIZATION_FAILED),
        RequestKind::ShareAcknowledge(_) => {
            top_level!(ShareAcknowledge, GROUP_AUTHORIZATION_FAILED)
        }
        RequestKind::AlterShareGroupOffsets(_) => {
            top_level!(AlterShareGroupOffsets, GROUP_AUTHORIZATION_FAILED)
        }
        RequestKind::DeleteShareGroupOffsets(_) => {
            top_level!(DeleteShareGroupOffsets, GROUP_AUTHORIZATION_FAILED)
        }
        RequestKind::AddOffsetsToTxn(_) => {
            top_level!(AddOffsetsToTxn, TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        }
        RequestKind::EndTxn(_) => top_level!(EndTxn, TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        RequestKind::SaslHandshake(_) => top_level!(SaslHandshake, SASL_AUTHENTICATION_FAILED),
        RequestKind::SaslAuthenticate(_) => {
            top_level!(SaslAuthenticate, SASL_AUTHENTICATION_FAILED)
        }
        RequestKind::CreateDelegationToken(_) => {
            top_level!(CreateDelegationToken, DELEGATION_TOKEN_AUTHORIZATION_FAILED)
        }
        RequestKind::RenewDelegationToken(_) => {
            top_level!(RenewDelegationToken, DELEGATION_TOKEN_AUTHORIZATION_FAILED)
        }
        RequestKind::ExpireDelegationToken(_) => {
            top_level!(ExpireDelegationToken, DELEGATION_TOKEN_AUTHORIZATION_FAILED)
        }
        RequestKind::DescribeDelegationToken(_) => {
            top_level!(
                DescribeDelegationToken,
                DELEGATION_TOKEN_AUTHORIZATION_FAILED
            )
        }
        _ => return None,
    })
}

/// APIs answered with one top-level CLUSTER_AUTHORIZATION_FAILED: cluster administration and broker-to-broker
/// calls. `None` for other keys.
fn top_level_cluster_errors(req: &KafkaRequest, _topic_code: i16) -> Option<ResponseKind> {
    use code::CLUSTER_AUTHORIZATION_FAILED;
    Some(match &req.body {
        RequestKind::ApiVersions(_) => top_level!(ApiVersions, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::ListGroups(_) => top_level!(ListGroups, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::DescribeAcls(_) => top_level!(DescribeAcls, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::DescribeLogDirs(_) => {
            top_level!(DescribeLogDirs, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::AlterPartitionReassignments(_) => {
            top_level!(AlterPartitionReassignments, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::ListPartitionReassignments(_) => {
            top_level!(ListPartitionReassignments, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::DescribeClientQuotas(_) => {
            top_level!(DescribeClientQuotas, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::DescribeUserScramCredentials(_) => {
            top_level!(DescribeUserScramCredentials, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::UpdateFeatures(_) => top_level!(UpdateFeatures, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::DescribeCluster(_) => {
            top_level!(DescribeCluster, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::ListTransactions(_) => {
            top_level!(ListTransactions, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::GetTelemetrySubscriptions(_) => {
            top_level!(GetTelemetrySubscriptions, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::PushTelemetry(_) => top_level!(PushTelemetry, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::ListConfigResources(_) => {
            top_level!(ListConfigResources, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::Vote(_) => top_level!(Vote, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::BeginQuorumEpoch(_) => {
            top_level!(BeginQuorumEpoch, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::EndQuorumEpoch(_) => top_level!(EndQuorumEpoch, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::DescribeQuorum(_) => top_level!(DescribeQuorum, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::AlterPartition(_) => top_level!(AlterPartition, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::Envelope(_) => top_level!(Envelope, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::FetchSnapshot(_) => top_level!(FetchSnapshot, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::BrokerRegistration(_) => {
            top_level!(BrokerRegistration, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::BrokerHeartbeat(_) => {
            top_level!(BrokerHeartbeat, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::UnregisterBroker(_) => {
            top_level!(UnregisterBroker, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::AllocateProducerIds(_) => {
            top_level!(AllocateProducerIds, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::ControllerRegistration(_) => {
            top_level!(ControllerRegistration, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::AssignReplicasToDirs(_) => {
            top_level!(AssignReplicasToDirs, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::AddRaftVoter(_) => top_level!(AddRaftVoter, CLUSTER_AUTHORIZATION_FAILED),
        RequestKind::RemoveRaftVoter(_) => {
            top_level!(RemoveRaftVoter, CLUSTER_AUTHORIZATION_FAILED)
        }
        RequestKind::UpdateRaftVoter(_) => {
            top_level!(UpdateRaftVoter, CLUSTER_AUTHORIZATION_FAILED)
        }
        _ => return None,
    })
}

/// Encodes `body` as a complete response frame (length prefix, header with `correlation_id`, body).
pub fn encode_frame(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, ResponseError> {
    let fail = |e: anyhow::Error| ResponseError::Encode {
        key,
        version,
        reason: e.to_string(),
    };
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, key.response_header_version(version))
        .map_err(fail)?;
    body.encode(&mut buf, version).map_err(fail)?;
    let len = i32::try_from(buf.len() - 4).expect("a synthesized response is small");
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The complete local error response frame for a denied request.
pub fn error_frame(req: &KafkaRequest, topic_code: i16) -> Result<Bytes, ResponseError> {
    let body = error_body(req, topic_code)?;
    encode_frame(req.api_key, req.api_version, req.correlation_id, &body)
}

/// What `filter_metadata` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MetadataFilter {
    /// (topic id, name) of every topic in the broker's response, for the topic-id map.
    pub learned: Vec<(uuid::Uuid, String)>,
    /// Topics hidden (all-topics request) or answered with TOPIC_AUTHORIZATION_FAILED (named request).
    pub denied: Vec<String>,
}

/// Rewrites a Metadata response frame (without its length prefix) so the client only sees topics it may use:
/// for a request naming topics, denied ones come back as TOPIC_AUTHORIZATION_FAILED without partitions; for an
/// all-topics request they are left out (what a Kafka broker with ACLs does). Returns the new frame with its
/// length prefix, or `None` when nothing had to change (the original bytes are then forwarded).
pub fn filter_metadata(
    frame: &Bytes,
    version: i16,
    named_request: bool,
    allowed: impl Fn(&str) -> bool,
) -> Result<(Option<Bytes>, MetadataFilter), ResponseError> {
    let key = ApiKey::Metadata;
    let fail = |e: anyhow::Error| ResponseError::Decode {
        key,
        version,
        reason: e.to_string(),
    };
    let mut buf = frame.clone();
    let header =
        ResponseHeader::decode(&mut buf, key.response_header_version(version)).map_err(fail)?;
    let mut resp = MetadataResponse::decode(&mut buf, version).map_err(fail)?;
    let mut report = MetadataFilter::default();
    let mut kept = Vec::with_capacity(resp.topics.len());
    for mut t in std::mem::take(&mut resp.topics) {
        let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
            kept.push(t);
            continue;
        };
        if !t.topic_id.is_nil() {
            report.learned.push((t.topic_id, name.clone()));
        }
        if allowed(&name) {
            kept.push(t);
            continue;
        }
        report.denied.push(name);
        if named_request {
            t.error_code = code::TOPIC_AUTHORIZATION_FAILED;
            t.partitions.clear();
            t.topic_authorized_operations = i32::MIN;
            kept.push(t);
        }
    }
    resp.topics = kept;
    if report.denied.is_empty() {
        return Ok((None, report));
    }
    let out = encode_frame(
        key,
        version,
        header.correlation_id,
        &ResponseKind::Metadata(resp),
    )?;
    Ok((Some(out), report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{TopicRef, decode};
    use kafka_protocol::messages::TopicName;

    fn name(s: &'static str) -> TopicName {
        TopicName(StrBytes::from_static_str(s))
    }

    fn request_frame(key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("c")))
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    /// Decodes a response frame the way a client does: length, header, body of that key and version.
    fn client_reads(frame: &Bytes, key: ApiKey, version: i16) -> (i32, ResponseKind) {
        let mut b = frame.clone();
        let len = i32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        assert_eq!(len, b.len() - 4, "length prefix");
        let _ = b.split_to(4);
        let h = ResponseHeader::decode(&mut b, key.response_header_version(version)).unwrap();
        let body = ResponseKind::decode(key, &mut b, version)
            .unwrap_or_else(|e| panic!("{key:?} v{version}: client cannot parse: {e}"));
        assert!(b.is_empty(), "{key:?} v{version}: trailing bytes");
        (h.correlation_id, body)
    }

    /// Every API key the crate knows, in every version: a default request of that key gets a local error
    /// response a client can parse, with the request's correlation id; only the share-group state RPCs that
    /// brokers send each other have none.
    #[test]
    fn every_key_and_version_gets_a_parseable_error_response() {
        let mut without = Vec::new();
        let mut failures = Vec::new();
        let mut unencodable = Vec::new();
        let mut checked = 0;
        for key in ApiKey::iter() {
            let range = key.valid_versions();
            for v in range.min..=range.max {
                // A request of this key with default fields, as decoded from the wire.
                let mut probe = BytesMut::new();
                RequestHeader::default()
                    .with_request_api_key(key as i16)
                    .with_request_api_version(v)
                    .with_correlation_id(7)
                    .encode(&mut probe, key.request_header_version(v))
                    .unwrap();
                let body = default_request(key);
                if body.encode(&mut probe, v).is_err() {
                    unencodable.push(format!("{key:?} v{v}"));
                    continue;
                }
                let req = decode(probe.freeze()).unwrap();
                match error_frame(&req, code::TOPIC_AUTHORIZATION_FAILED) {
                    Ok(f) => {
                        let (corr, _) = client_reads(&f, key, v);
                        assert_eq!(corr, 7, "{key:?} v{v}");
                        checked += 1;
                    }
                    Err(ResponseError::NoLocalResponse(k)) => without.push(k),
                    Err(e) => failures.push(format!("{key:?} v{v}: {e}")),
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        without.sort_by_key(|k| *k as i16);
        without.dedup();
        assert_eq!(
            without,
            vec![
                ApiKey::InitializeShareGroupState,
                ApiKey::ReadShareGroupState,
                ApiKey::WriteShareGroupState,
                ApiKey::DeleteShareGroupState,
                ApiKey::ReadShareGroupStateSummary,
                ApiKey::DescribeShareGroupOffsets,
            ]
        );
        // Default fields these versions cannot carry (the crate refuses to encode them); covered elsewhere.
        assert_eq!(
            unencodable,
            ["OffsetCommit v10", "OffsetFetch v10", "InitProducerId v6"]
        );
        assert!(checked > 250, "only {checked} key/version pairs checked");
    }

    /// A default request body for `key`; the match is exhaustive, so a key added to the crate fails to compile here.
    fn default_request(key: ApiKey) -> RequestKind {
        macro_rules! all {
            ($($k:ident),* $(,)?) => {
                match key {
                    $(ApiKey::$k => RequestKind::$k(Default::default()),)*
                }
            };
        }
        all!(
            Produce,
            Fetch,
            ListOffsets,
            Metadata,
            OffsetCommit,
            OffsetFetch,
            FindCoordinator,
            JoinGroup,
            Heartbeat,
            LeaveGroup,
            SyncGroup,
            DescribeGroups,
            ListGroups,
            SaslHandshake,
            ApiVersions,
            CreateTopics,
            DeleteTopics,
            DeleteRecords,
            InitProducerId,
            OffsetForLeaderEpoch,
            AddPartitionsToTxn,
            AddOffsetsToTxn,
            EndTxn,
            WriteTxnMarkers,
            TxnOffsetCommit,
            DescribeAcls,
            CreateAcls,
            DeleteAcls,
            DescribeConfigs,
            AlterConfigs,
            AlterReplicaLogDirs,
            DescribeLogDirs,
            SaslAuthenticate,
            CreatePartitions,
            CreateDelegationToken,
            RenewDelegationToken,
            ExpireDelegationToken,
            DescribeDelegationToken,
            DeleteGroups,
            ElectLeaders,
            IncrementalAlterConfigs,
            AlterPartitionReassignments,
            ListPartitionReassignments,
            OffsetDelete,
            DescribeClientQuotas,
            AlterClientQuotas,
            DescribeUserScramCredentials,
            AlterUserScramCredentials,
            Vote,
            BeginQuorumEpoch,
            EndQuorumEpoch,
            DescribeQuorum,
            AlterPartition,
            UpdateFeatures,
            Envelope,
            FetchSnapshot,
            DescribeCluster,
            DescribeProducers,
            BrokerRegistration,
            BrokerHeartbeat,
            UnregisterBroker,
            DescribeTransactions,
            ListTransactions,
            AllocateProducerIds,
            ConsumerGroupHeartbeat,
            ConsumerGroupDescribe,
            ControllerRegistration,
            GetTelemetrySubscriptions,
            PushTelemetry,
            AssignReplicasToDirs,
            ListConfigResources,
            DescribeTopicPartitions,
            ShareGroupHeartbeat,
            ShareGroupDescribe,
            ShareFetch,
            ShareAcknowledge,
            AddRaftVoter,
            RemoveRaftVoter,
            UpdateRaftVoter,
            InitializeShareGroupState,
            ReadShareGroupState,
            WriteShareGroupState,
            DeleteShareGroupState,
            ReadShareGroupStateSummary,
            DescribeShareGroupOffsets,
            AlterShareGroupOffsets,
            DeleteShareGroupOffsets,
        )
    }

    #[test]
    fn produce_denial_names_every_partition_in_every_version() {
        let range = ApiKey::Produce.valid_versions();
        for v in range.min..=range.max {
            let mut t = produce_request::TopicProduceData::default().with_partition_data(vec![
                produce_request::PartitionProduceData::default().with_index(0),
                produce_request::PartitionProduceData::default().with_index(3),
            ]);
            if v >= 13 {
                t.topic_id = uuid::Uuid::from_u128(9);
            } else {
                t.name = name("payments");
            }
            let body = RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(-1)
                    .with_topic_data(vec![t]),
            );
            let req = decode(request_frame(ApiKey::Produce, v, &body)).unwrap();
            assert!(expects_response(&req));
            let f = error_frame(&req, code::TOPIC_AUTHORIZATION_FAILED).unwrap();
            let (corr, resp) = client_reads(&f, ApiKey::Produce, v);
            assert_eq!(corr, 7);
            let ResponseKind::Produce(p) = resp else {
                panic!()
            };
            assert_eq!(p.responses.len(), 1, "v{v}");
            let parts = &p.responses[0].partition_responses;
            assert_eq!(
                parts
                    .iter()
                    .map(|p| (p.index, p.error_code))
                    .collect::<Vec<_>>(),
                vec![(0, 29), (3, 29)],
                "v{v}"
            );
            if v < 13 {
                assert_eq!(p.responses[0].name.0.as_str(), "payments");
            }
        }
    }

    #[test]
    fn acks_zero_produce_gets_no_response() {
        let body = RequestKind::Produce(ProduceRequest::default().with_acks(0));
        let req = decode(request_frame(ApiKey::Produce, 9, &body)).unwrap();
        assert!(!expects_response(&req));
    }

    #[test]
    fn fetch_and_offset_fetch_denials_carry_29_per_partition() {
        let body = RequestKind::Fetch(FetchRequest::default().with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(name("orders"))
                .with_partitions(vec![fetch_request::FetchPartition::default().with_partition(2)]),
        ]));
        let req = decode(request_frame(ApiKey::Fetch, 12, &body)).unwrap();
        let (_, resp) = client_reads(&error_frame(&req, 29).unwrap(), ApiKey::Fetch, 12);
        let ResponseKind::Fetch(f) = resp else {
            panic!()
        };
        assert_eq!(f.error_code, 0);
        assert_eq!(f.responses[0].topic.0.as_str(), "orders");
        assert_eq!(f.responses[0].partitions[0].partition_index, 2);
        assert_eq!(f.responses[0].partitions[0].error_code, 29);

        for v in [1, 7, 8, 9] {
            let body = if v < 8 {
                RequestKind::OffsetFetch(OffsetFetchRequest::default().with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(name("orders"))
                        .with_partition_indexes(vec![0]),
                ])))
            } else {
                RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
                    offset_fetch_request::OffsetFetchRequestGroup::default().with_topics(Some(
                        vec![
                            offset_fetch_request::OffsetFetchRequestTopics::default()
                                .with_name(name("orders"))
                                .with_partition_indexes(vec![0]),
                        ],
                    )),
                ]))
            };
            let req = decode(request_frame(ApiKey::OffsetFetch, v, &body)).unwrap();
            assert_eq!(req.topics, vec![TopicRef::Name("orders".into())]);
            let (_, resp) = client_reads(&error_frame(&req, 29).unwrap(), ApiKey::OffsetFetch, v);
            let ResponseKind::OffsetFetch(o) = resp else {
                panic!()
            };
            let code = if v < 8 {
                o.topics[0].partitions[0].error_code
            } else {
                o.groups[0].topics[0].partitions[0].error_code
            };
            assert_eq!(code, 29, "OffsetFetch v{v}");
        }
    }

    #[test]
    fn group_and_transaction_apis_get_their_own_authorization_errors() {
        let req = decode(request_frame(
            ApiKey::JoinGroup,
            7,
            &RequestKind::JoinGroup(Default::default()),
        ))
        .unwrap();
        let (_, resp) = client_reads(&error_frame(&req, 29).unwrap(), ApiKey::JoinGroup, 7);
        let ResponseKind::JoinGroup(j) = resp else {
            panic!()
        };
        assert_eq!(j.error_code, code::GROUP_AUTHORIZATION_FAILED);

        let body = RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("t")))),
        );
        let req = decode(request_frame(ApiKey::InitProducerId, 4, &body)).unwrap();
        let (_, resp) = client_reads(&error_frame(&req, 29).unwrap(), ApiKey::InitProducerId, 4);
        let ResponseKind::InitProducerId(i) = resp else {
            panic!()
        };
        assert_eq!(i.error_code, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }

    fn metadata_response_frame(version: i16, topics: &[(&'static str, u128)]) -> Bytes {
        let resp = MetadataResponse::default()
            .with_brokers(vec![
                metadata_response::MetadataResponseBroker::default()
                    .with_node_id(1.into())
                    .with_host(StrBytes::from_static_str("10.0.3.20"))
                    .with_port(9092),
            ])
            .with_topics(
                topics
                    .iter()
                    .map(|(n, id)| {
                        let mut t = metadata_response::MetadataResponseTopic::default()
                            .with_name(Some(name(n)))
                            .with_partitions(vec![
                                metadata_response::MetadataResponsePartition::default(),
                            ]);
                        if version >= 10 {
                            t.topic_id = uuid::Uuid::from_u128(*id);
                        }
                        t
                    })
                    .collect(),
            );
        let f = encode_frame(ApiKey::Metadata, version, 5, &ResponseKind::Metadata(resp)).unwrap();
        f.slice(4..)
    }

    #[test]
    fn metadata_hides_or_refuses_denied_topics_and_learns_ids() {
        for v in [1, 9, 10, 12] {
            let frame = metadata_response_frame(v, &[("orders", 1), ("payments", 2)]);
            let allowed = |t: &str| t == "orders";
            // All-topics request: payments is left out.
            let (out, report) = filter_metadata(&frame, v, false, allowed).unwrap();
            assert_eq!(report.denied, vec!["payments".to_string()]);
            if v >= 10 {
                assert_eq!(
                    report.learned,
                    vec![
                        (uuid::Uuid::from_u128(1), "orders".to_string()),
                        (uuid::Uuid::from_u128(2), "payments".to_string())
                    ]
                );
            }
            let (corr, resp) = client_reads(&out.unwrap(), ApiKey::Metadata, v);
            assert_eq!(corr, 5);
            let ResponseKind::Metadata(m) = resp else {
                panic!()
            };
            assert_eq!(m.brokers.len(), 1, "brokers are kept");
            let names: Vec<_> = m
                .topics
                .iter()
                .map(|t| t.name.as_ref().unwrap().0.to_string())
                .collect();
            assert_eq!(names, vec!["orders"]);
            // Named request: payments comes back as TOPIC_AUTHORIZATION_FAILED without partitions.
            let (out, _) = filter_metadata(&frame, v, true, allowed).unwrap();
            let (_, resp) = client_reads(&out.unwrap(), ApiKey::Metadata, v);
            let ResponseKind::Metadata(m) = resp else {
                panic!()
            };
            assert_eq!(m.topics.len(), 2);
            assert_eq!(m.topics[1].error_code, 29);
            assert!(m.topics[1].partitions.is_empty());
            assert_eq!(m.topics[0].error_code, 0);
            // Nothing denied: the broker's bytes are forwarded unchanged.
            let (out, _) = filter_metadata(&frame, v, false, |_| true).unwrap();
            assert!(out.is_none());
        }
    }
}
