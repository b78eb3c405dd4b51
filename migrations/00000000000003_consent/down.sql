DROP TABLE IF EXISTS consent_records;
