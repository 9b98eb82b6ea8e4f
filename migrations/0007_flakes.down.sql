DROP TABLE flakes;
