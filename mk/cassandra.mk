# Real single-node Apache Cassandra for tests and benchmarks (scripts/cassandra.py).
# CQL on 127.0.0.1:9142; data and logs under build/cassandra/.
# A real 3-node cluster (RF 3 tests, `bench store --nodes 3`): 127.0.0.1-3, CQL 9242 on each,
# under build/cassandra-cluster/node{1,2,3}/. tests/store/test_three_nodes.py starts and stops
# its own; these targets are for working with one by hand.
CASSANDRA := $(PY) scripts/cassandra.py
CLUSTER_NODES ?= 3

.PHONY: cassandra-fetch cassandra-start cassandra-stop cassandra-status
.PHONY: cassandra-cluster-start cassandra-cluster-stop cassandra-cluster-status

cassandra-fetch: $(STAMP)
	$(CASSANDRA) fetch

cassandra-start: $(STAMP)
	$(CASSANDRA) start

cassandra-stop:
	$(CASSANDRA) stop

cassandra-status:
	$(CASSANDRA) status

cassandra-cluster-start: $(STAMP)
	$(CASSANDRA) start --cluster $(CLUSTER_NODES)

cassandra-cluster-stop:
	$(CASSANDRA) stop --cluster $(CLUSTER_NODES)

cassandra-cluster-status:
	$(CASSANDRA) status --cluster $(CLUSTER_NODES)
