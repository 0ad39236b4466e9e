# Real single-node Apache Cassandra for tests and benchmarks (scripts/cassandra.py).
# CQL on 127.0.0.1:9142; data and logs under build/cassandra/.
CASSANDRA := $(PY) scripts/cassandra.py

.PHONY: cassandra-fetch cassandra-start cassandra-stop cassandra-status

cassandra-fetch: $(STAMP)
	$(CASSANDRA) fetch

cassandra-start: $(STAMP)
	$(CASSANDRA) start

cassandra-stop:
	$(CASSANDRA) stop

cassandra-status:
	$(CASSANDRA) status
