DROP TABLE timestamp_records;
