DROP TABLE results;
DROP TABLE jobs;
DROP TABLE workers;
DROP TABLE crates;
DROP TABLE crate_list_entries;
DROP TABLE crate_lists;
DROP TABLE experiments;
DROP TABLE api_tokens;
