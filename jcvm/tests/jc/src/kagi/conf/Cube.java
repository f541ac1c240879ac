package kagi.conf;

class Cube extends Square {
    Cube(short s) {
        super(s);
    }

    short area() {
        return (short) (6 * super.area());
    }

    public short id() {
        return 3;
    }
}
