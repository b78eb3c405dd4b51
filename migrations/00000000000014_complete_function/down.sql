DROP FUNCTION stratum_complete_deliveries(uuid[], uuid[], text[], integer[], timestamptz[], text[], integer[], timestamptz[], boolean[], integer[], text[]);
