"""The local cluster's data plane: kwok only simulates pods, so for each one the manager runs
the real service as a host process (redis-server, a Kafka broker from Maven jars, moto_server,
mosquitto, PostgreSQL, RabbitMQ), tied to the run.

May import: ground, services
"""
