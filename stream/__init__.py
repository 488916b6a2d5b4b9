"""Event-driven Snap2Caption: upload events in over Kafka, captions, dead letters and feedback out.

settings           one StreamSettings class (env), shared by every Kafka component
cloudevents        CloudEvents 1.0 binary mode over Kafka headers (and HTTP, for push mode)
topics             create the topics if they are missing
errors             Poison (dead-letter it) vs Transient (retry it): how every failure is classified
fetch              image fetchers: S3, HTTP(S) with SSRF guards, inline base64
service_client     POST /generate-caption, answers classified as Poison/Transient
consumer           `snap2caption consume`: the transactional consume-caption-produce loop
feedback_producer  POST /feedback -> caption.feedback through a durable, ordered spool
push               POST /events: Knative push mode (CloudEvent in, captioned CloudEvent out)
"""
