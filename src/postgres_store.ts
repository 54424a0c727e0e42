/**
 * The PostgreSQL store: the contract on tables that production can trust,
 * through postgres.js (pipelined, pooled, prepared statements). Its code
 * lives in `src/postgres/`, split by job; this module is its entry.
 *
 * @module
 */

export {
  PostgresEventStore,
  type PostgresEventStoreOptions,
} from "./postgres/store.ts";
