DROP TABLE experiment_estimates;
