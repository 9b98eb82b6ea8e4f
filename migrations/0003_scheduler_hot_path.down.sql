ALTER TABLE results ADD CONSTRAINT results_crate_id_fkey FOREIGN KEY (crate_id) REFERENCES crates (id);
ALTER TABLE results ADD CONSTRAINT results_job_id_fkey FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE SET NULL;
ALTER TABLE results ADD CONSTRAINT results_worker_id_fkey FOREIGN KEY (worker_id) REFERENCES workers (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD CONSTRAINT jobs_lease_owner_fkey FOREIGN KEY (lease_owner) REFERENCES workers (id) ON DELETE SET NULL;
