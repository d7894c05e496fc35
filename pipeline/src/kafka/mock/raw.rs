//! The mock cluster settings rdkafka's [`MockCluster`](rdkafka::mocking::MockCluster) has no
//! method for, through librdkafka's C API: the only unsafe code of the in-memory broker.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::c_int;

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys as rdsys;

/// A mock cluster that a client handle owns, valid while that handle is borrowed.
pub(super) struct RawCluster<'c> {
    cluster: *mut rdsys::rd_kafka_mock_cluster_t,
    _owner: PhantomData<&'c ()>,
}

impl<'c> RawCluster<'c> {
    /// The cluster `client` owns (one created with `test.mock.num.brokers`), if any.
    pub(super) fn of<C: ClientContext>(client: &'c Client<C>) -> Option<Self> {
        // SAFETY: `native_ptr` is the live handle `client` owns; librdkafka only reads the
        // cluster pointer it stored when it created the handle.
        let cluster = unsafe { rdsys::rd_kafka_handle_mock_cluster(client.native_ptr()) };
        (!cluster.is_null()).then_some(RawCluster { cluster, _owner: PhantomData })
    }

    /// Advertises broker `id` at `host:port` in metadata (it keeps listening where it was).
    pub(super) fn broker_set_host_port(&self, id: i32, host: &CStr, port: u16) {
        // SAFETY: the cluster lives as long as its owner handle, borrowed for 'c; librdkafka
        // copies `host` (a valid C string) under the cluster lock.
        unsafe { rdsys::rd_kafka_mock_broker_set_host_port(self.cluster, id, host.as_ptr(), c_int::from(port)) }
    }

    /// Sets the mock's `group.initial.rebalance.delay.ms`.
    pub(super) fn group_initial_rebalance_delay_ms(&self, delay_ms: i32) {
        // SAFETY: the cluster lives as long as its owner handle, borrowed for 'c; librdkafka
        // sets the value under the cluster lock.
        unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(self.cluster, delay_ms) }
    }
}
