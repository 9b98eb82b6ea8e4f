DROP TABLE triage_audit;
DROP TABLE triage_marks;
